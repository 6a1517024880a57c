"""Overview: the model card, its cost, its training and how it uses its masks."""

import numpy as np
import streamlit as st

from analysis import macs_summary
from analysis.path_health import (
    class_entropy, decision_entropy, health_over_epochs, path_health_table, transition_counts,
)
from analysis.speed import SPEED_COLUMNS, load_speed, speed_table
from app import figures, health_figures
from app.widgets import chart
from app.state import sidebar, training_log, try_outputs
from models import cost_model, gated_convs

COLLAPSE_SHARE = 0.9  # one action chosen by more than this share of inputs in a layer

run, split = sidebar()
meta = run.meta
st.title(f"{meta.arch} on {meta.dataset}")
st.caption(f"Run folder: `{run.path}`")

costs = cost_model(run.model, tuple(meta.input_shape))
gates = gated_convs(run.model)
cols = st.columns(4)
cols[0].metric("Test accuracy (recorded)", f"{meta.metrics.get('test_accuracy', float('nan')):.2%}")
cols[1].metric("Ungated MACs (counted)", f"{costs.ungated_macs / 1e6:.2f} M")
cols[2].metric("Gated layers", f"{len(gates)}", help="layers that pick one of K channel masks per input")
cols[3].metric("Masks per gated layer (K)", f"{meta.arch_args.get('num_actions', '-')}" if gates else "-")

st.caption("Where the compute is: each layer's MACs in the ungated network (the bars add up to the ungated "
           "total); a gate decides per input how many of a gated layer's channels run.")
chart(st, figures.layer_costs(costs.layers), key="layer_costs")

with st.expander("Model card", expanded=False):
    st.json({"arch": meta.arch, "arch_args": meta.arch_args, "dataset": meta.dataset,
             "classes": meta.class_names, "input_shape": meta.input_shape, "mean": meta.mean,
             "std": meta.std, "metrics": meta.metrics, "training": meta.training, "version": meta.version})

outputs, problem = try_outputs(run, split)
if problem:
    st.warning(problem)
    st.stop()


@st.cache_data(show_spinner="Building the report (seconds)...", max_entries=4)
def report_html(path: str, weights_sha256: str, split: str, analysis_stamp: float, _outputs) -> bytes:
    """The file of ``gatescope report RUN --html`` for this split (rebuilt when the analysis changes)."""
    from app.html_report import html_report
    from app.state import get_run

    return html_report(get_run(path), split=split, outputs=_outputs).encode("utf-8")


manifest = run.path / "analysis" / "manifest.json"
report_args = (str(run.path), meta.weights_sha256, split, manifest.stat().st_mtime if manifest.is_file() else 0.0)
cols = st.columns([1, 3], vertical_alignment="center")
if cols[0].button("Prepare a report (HTML)", key="prepare_report",
                  help="one self-contained file to present: it opens offline in any browser"):
    st.session_state["report_prepared"] = report_args
if st.session_state.get("report_prepared") == report_args:
    report = report_html(*report_args, outputs)
    cols[0].download_button("Download a report (HTML)", report, file_name=f"{run.path.name}-{split}-report.html",
                            mime="text/html", key="download_report", on_click="ignore", type="primary")
    cols[1].caption(f"{len(report) / 1e6:.1f} MB: the model card, counted MACs, path health, a Sankey per class and, "
                    f"where analysed, the map and the detection audit; the same file as "
                    f"`gatescope report {run.path} --html OUT.html`.")
else:
    cols[1].caption("One self-contained HTML file of this run to present (offline, plotly inlined), built on demand.")

st.subheader(f"Per-input cost on the {split} split ({len(outputs.labels):,} inputs)")
summary = macs_summary(outputs)
cols = st.columns(4)
cols[0].metric("Accuracy (recomputed)", f"{outputs.accuracy:.2%}")
cols[1].metric("Mean counted MACs", f"{summary['mean']:.1%}", help="of the ungated network; counted, not measured")
cols[2].metric("Median", f"{summary['median']:.1%}")
cols[3].metric("Min / max", f"{summary['min']:.1%} / {summary['max']:.1%}")
chart(st, figures.macs_histogram(outputs.macs_ratio), key="macs_hist")

speed = load_speed(run)
if speed:
    st.subheader("Measured speed")
    st.caption(f"Milliseconds per call on {speed['hardware']}, torch {speed['torch']}: the same architecture without "
               "gates, the masked network (every channel computed, switched-off ones multiplied by 0) in its own and in "
               "the channels-last layout, and the dynamic executor (switched-off channels skipped). Of counted ideal: "
               "the executor's speed-up over the channels-last masked network as a share of 1 / MACs ratio.")
    st.dataframe(speed_table(speed), hide_index=True, key="speed",
                 column_config={title: st.column_config.NumberColumn(format=fmt) for title, fmt in SPEED_COLUMNS.values()})
elif gates:
    st.caption(f"Measured latency (ungated, masked, channel-skipping executor): "
               f"`python benchmarks/dynamic_speed.py {run.path}` stores it here.")

log = training_log(run)
if not log.empty:
    st.subheader("Training")
    chart(st, figures.training_curves(log), key="train_curves")

if gates:
    st.subheader("Mask utilisation")
    k = outputs.log_probs.shape[2]
    top_share = np.array([np.bincount(outputs.paths[:, l], minlength=k).max() for l in range(len(gates))]) / len(outputs.paths)
    dead = [int((np.bincount(outputs.paths[:, l], minlength=k) == 0).sum()) for l in range(len(gates))]
    collapsed = [l for l, s in enumerate(top_share) if s > COLLAPSE_SHARE]
    if collapsed:
        st.warning(f"Collapse: in gate(s) {collapsed} one action is chosen by more than "
                   f"{COLLAPSE_SHARE:.0%} of inputs; those layers behave like static ones.")
    st.caption("Dead actions per gate (never chosen on this split): " + ", ".join(f"gate {l}: {d}/{k}" for l, d in enumerate(dead)))
    chart(st, figures.action_usage(outputs.paths, k), key="action_usage")
    layer = st.selectbox("Per-class action preference of gate", range(len(gates)), key="class_pref_layer")
    chart(st, figures.class_action_preference(outputs.paths, outputs.labels, layer, meta.class_names, k),
                    key="class_pref")

    st.subheader("Path health")
    st.caption(f"Measured as mixture-of-experts routing is, on the {split} split, in bits. Decision entropy: of each "
               f"input's action distribution p_l(x), 0 when one action is certain, log2 K = {np.log2(k):.2f} when all "
               f"{k} are equally likely. I(class; action): what the chosen action says about the class (plug-in "
               "estimate, at most H(class)). Utilisation: the most-chosen action's share times K; 1 is even use, "
               f"{k} is collapse.")
    health = path_health_table(outputs.log_probs, outputs.paths, outputs.labels)
    st.dataframe(health.drop(columns="entropy_max").rename(columns={
        "entropy": "mean entropy (bits)", "mi": "I(class; action) (bits)", "mi_share": "share of H(class)",
        "utilisation": "utilisation (max share × K)", "actions_used": f"actions used (of {k})"}),
        hide_index=True, key="path_health", column_config={
            "mean entropy (bits)": st.column_config.NumberColumn(format="%.3f"),
            "I(class; action) (bits)": st.column_config.NumberColumn(format="%.3f"),
            "share of H(class)": st.column_config.NumberColumn(format="percent"),
            "utilisation (max share × K)": st.column_config.NumberColumn(format="%.2f")})
    chart(st, health_figures.health_bars(decision_entropy(outputs.log_probs), health,
                                         class_entropy=class_entropy(outputs.labels)), key="path_health_bars")
    if len(gates) > 1:
        cols = st.columns([1, 1])
        layer = cols[0].selectbox("Transitions from gate", range(len(gates) - 1), key="transition_layer",
                                  format_func=lambda l: f"gate {l} to gate {l + 1}")
        shares = cols[1].radio("Show", ["row shares", "counts"], horizontal=True, key="transition_scale") == "row shares"
        st.caption("Rows: the actions used at the first gate; columns: those used at the next one.")
        chart(st, health_figures.transition_heatmap(transition_counts(outputs.paths, layer, k), layer, shares=shares),
              key="transitions")
    history = health_over_epochs(log)
    if history.empty:
        st.caption("The training log of this run predates per-epoch path health; runs trained from now on record it.")
    else:
        st.caption("Path health over training, on the test split evaluated after each epoch.")
        chart(st, health_figures.health_evolution(history), key="path_health_epochs")
