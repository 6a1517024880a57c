"""Compare: two runs with the same input shape side by side and, for two dynamic runs of the same
architecture, their masks matched one-to-one and how often the same inputs take matched masks."""

from pathlib import Path

import streamlit as st

from analysis.compare import check_comparable, compare_runs
from analysis.path_health import action_shares
from app import compare_figures
from app.links import follow_url, one_of, to_url
from app.state import get_run, run_paths, sidebar, try_outputs
from app.widgets import chart
from models import RunError

run, split = sidebar()
st.title("Compare two runs")
paths = run_paths()
if len(paths) < 2:
    st.info("Only one run is open, and this page compares two. It compares any two runs of the sidebar's Run list: "
            "the runs the app was started with (`gatescope app RUN_A RUN_B`), those found under `--root DIR`, and "
            "runs uploaded or opened by path in the sidebar. Open a second run there to compare it with this one.")
    st.stop()


def label(path: str) -> str:
    return "/".join(Path(path).parts[-2:])


for key in ("compare_a", "compare_b"):
    if problem := follow_url(key, one_of(paths)):
        st.warning(problem)
first = str(run.path) if str(run.path) in paths else paths[0]
cols = st.columns(2)
path_a = cols[0].selectbox("Run A", paths, index=paths.index(first), format_func=label, key="compare_a")
path_b = cols[1].selectbox("Run B", paths, index=paths.index(next(p for p in paths if p != first)),
                           format_func=label, key="compare_b")
to_url(compare_a=path_a, compare_b=path_b)
names = (f"A: {label(path_a)}", f"B: {label(path_b)}")
if path_a == path_b:
    st.info("Run A and run B are the same run: every figure below agrees with itself.")

try:
    run_a, run_b = get_run(path_a), get_run(path_b)
    check_comparable(run_a, run_b)
except (RunError, ValueError) as e:
    st.warning(f"These two runs cannot be compared: {e}. Choose two runs that take the same input shape.")
    st.stop()
(out_a, problem_a), (out_b, problem_b) = try_outputs(run_a, split), try_outputs(run_b, split)
for name, problem in ((names[0], problem_a), (names[1], problem_b)):
    if problem:
        st.warning(f"{name}: {problem}")
if problem_a or problem_b:
    st.stop()
result = compare_runs(run_a, out_a, run_b, out_b)

st.caption(f"Both runs on the {split} split of their datasets ({run_a.meta.dataset}: {len(out_a.labels):,} inputs; "
           f"{run_b.meta.dataset}: {len(out_b.labels):,} inputs). MACs are counted, not measured.")
acc, ratio = result.accuracy, [r.mean() for r in result.macs_ratio]
mean_macs = [m.mean() / 1e6 for m in result.macs]
same_reference = result.ungated_macs[0] == result.ungated_macs[1]
cols = st.columns(4)
cols[0].metric("Accuracy (A)", f"{acc[0]:.2%}")
cols[1].metric("Accuracy (B)", f"{acc[1]:.2%}", delta=f"{(acc[1] - acc[0]) * 100:+.2f} pt vs A")
if same_reference:
    help_text = f"mean per-input counted MACs over the ungated network's {result.ungated_macs[0] / 1e6:.2f} M"
    cols[2].metric("Mean counted MACs (A)", f"{ratio[0]:.1%}", help=help_text)
    cols[3].metric("Mean counted MACs (B)", f"{ratio[1]:.1%}", delta=f"{(ratio[1] - ratio[0]) * 100:+.1f} pt vs A",
                   delta_color="inverse", help=help_text)
else:  # shares of two different ungated networks do not compare: millions of MACs do
    cols[2].metric("Mean counted MACs (A)", f"{mean_macs[0]:.2f} M", help=f"{ratio[0]:.1%} of its ungated network")
    cols[3].metric("Mean counted MACs (B)", f"{mean_macs[1]:.2f} M", delta_color="inverse",
                   delta=f"{mean_macs[1] - mean_macs[0]:+.2f} M vs A", help=f"{ratio[1]:.1%} of its ungated network")

st.subheader("Counted MACs per input")
chart(st, compare_figures.macs_distributions(result.macs, result.ungated_macs, names), key="compare_macs")

st.subheader("Mask utilisation per gate")
if any(len(u) for u in result.utilisation):
    st.caption("The most-chosen action's share times K: 1 is even use of the K masks, K is collapse (one mask for "
               "every input). " + " ".join(f"{n} is ungated." for n, u in zip(names, result.utilisation) if not len(u)))
    chart(st, compare_figures.utilisation_bars(result.utilisation, result.num_actions, names),
          key="compare_utilisation")
else:
    st.caption("Neither run is gated: there are no masks to use.")

st.subheader("Matched masks and path agreement")
if result.note:
    st.info(result.note)
    st.stop()
agreement = result.agreement


def share(value: float) -> str:
    """A share in percent, with the precision a chance level of whole paths (often far below 1%) needs."""
    return f"{value:.1%}" if value >= 0.001 or value == 0 else f"{value:.3%}"


def versus_chance(col, label: str, observed: float, chance: float, **kwargs) -> None:
    points = round((observed - chance) * 100, 1)
    col.metric(label, share(observed), delta=f"{points:+.1f} pt vs chance" if points else "0.0 pt vs chance",
               delta_color="normal" if points else "off", **kwargs)


cols = st.columns(3)
versus_chance(cols[0], "Whole-path agreement", agreement.whole_path, agreement.chance_whole_path,
              help="share of inputs that take matched masks at every gate in both runs")
cols[1].metric("Chance level (whole path)", share(agreement.chance_whole_path),
               help="what two runs choosing whole paths independently of the input, with these path frequencies, "
                    "would agree on")
versus_chance(cols[2], "Mean per-gate agreement", agreement.per_gate.mean(), agreement.chance_per_gate.mean())
st.caption("Each gate's masks are matched one-to-one between the runs by the cosine similarity of their channel "
           "values (Hungarian matching; no input is looked at). Then, for every input, the action run A took is "
           "mapped to its match in run B: well above chance, the paths follow the data; near chance, the seed. "
           "Channel j of one run is compared with channel j of the other, which is meaningful when the two networks' "
           "channels correspond (e.g. both were fine-tuned from the same pretrained weights).")
chart(st, compare_figures.agreement_bars(agreement), key="compare_agreement")
st.caption("Similarity of the matched masks per gate (one point per pair) against the mean over all pairs, which a "
           "random matching gets on average: a matching far above it pairs masks that resemble each other.")
chart(st, compare_figures.matched_similarity(result.matches), key="compare_similarity")
gate = st.selectbox("Similarity of every pair of masks at gate", range(len(result.matches)), key="compare_gate",
                    format_func=lambda g: f"gate {g}")
shares = tuple(action_shares(o.paths[:, [gate]], k)[0] for o, k in ((out_a, result.num_actions[0]),
                                                                     (out_b, result.num_actions[1])))
chart(st, compare_figures.similarity_heatmap(result.matches[gate], shares, gate, names), key="compare_heatmap")
