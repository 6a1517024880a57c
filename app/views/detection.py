"""Detection: the audit of adversarial-input detectors of a run, from its analysis folder."""

import pandas as pd
import streamlit as st

from analysis.adversarial.audit import audit_table, upgraded
from analysis.adversarial.compute_attack import compute_table
from analysis.adversarial.protocol import confusion_at
from app import audit_figures, figures
from app.jobs_panel import require_analysis
from app.state import get_analysis, get_analysis_params, get_analysis_table, sidebar
from app.widgets import chart

run, _ = sidebar()
sha, path = run.meta.weights_sha256, str(run.path)
st.title("Detection")
results = get_analysis(path, sha, "detection")
require_analysis(run, stored=results is not None, what="the audit of adversarial-input detectors")
results = upgraded(results)
if results["format"] < 3:
    st.warning(f"These results were stored by an older gatescope: one adaptive attack and one transfer matrix "
               f"(decision-logreg), no confident attacks, no validation AUCs. `gatescope analyze {run.path}` "
               f"recomputes the full audit.")

table = audit_table(results)
params = get_analysis_params(path, sha, "detection") or {}
analysed = (f"its first {params['limit']:,} images" if params.get("limit") else
            f"all {results['n_images']:,} of its images" if results.get("n_images") else "all its images")
st.caption(f"The `{params.get('split', '?')}` split, {analysed}. "
           f"Successful attacks only. Clean and attacked versions of an image fall on the same side of a "
           f"{results['split']['train']}/{results['split']['test']} split of the analysed images; detectors train on the training side, choose hyperparameters on a validation part of it, and "
           f"every figure below is on the test side (counts in the table), with bootstrap 95% intervals.")

families = list(dict.fromkeys(table["family"]))
shown = st.multiselect("Detector families", families, default=families, key="families")
view = table[table["family"].isin(shown)]

st.subheader("ROC-AUC per attack and detector")
st.markdown("Columns say how each attack relates to the decision boundary: *minimal* attacks stop just across it "
            "(a confidence test catches them), *confident* ones push past it by a logit margin.")
chart(st, audit_figures.auc_grid(view), key="auc_grid")
best = {a: d for a, d in results.get("best_decision", {}).items() if d}
if best:
    st.markdown("Best decision-feature variant per attack, chosen by **validation** AUC (never the test side): "
                + "; ".join(f"{a}: `{d}`" for a, d in best.items()) + ".")

st.dataframe(view.drop(columns=["family"]), hide_index=True, column_config={
    "success": st.column_config.NumberColumn(format="percent"),
    **{c: st.column_config.NumberColumn(format="%.3f") for c in
       ("ROC-AUC", "TPR@5%FPR", "validation AUC", "adaptive ROC-AUC")},
    "adaptive evaded@5%FPR": st.column_config.NumberColumn(format="percent"),
    "adaptive success": st.column_config.NumberColumn(format="percent")})
st.download_button("Download table (CSV)", table.to_csv(index=False), file_name=f"{run.path.name}-detection.csv",
                   mime="text/csv")

adaptive = results.get("adaptive") or {}
if adaptive:
    attacked = next(iter(adaptive.values()))["attack"]
    st.subheader(f"Every detector attacked: oblivious vs adaptive {attacked}")
    sample = next(iter(adaptive.values()))["attacked"]
    st.markdown(f"An adaptive attack knows the detector: PGD with {attacked}'s budget that raises the classifier's "
                f"loss until the input is misclassified, then lowers the detector's score (through the relaxed "
                f"decisions for decision features). {sample} test-side inputs per detector. A detector without a "
                f"differentiable score is shown on the inputs crafted against `decision-logreg`.")
    oblivious = {d: m["auc"] for d, m in results["attacks"][attacked]["detectors"].items()}
    scored = {d: a["auc"] for d, a in adaptive.items() if "auc" in a and d in view["detector"].values}
    chart(st, audit_figures.oblivious_vs_adaptive(oblivious, scored), key="adaptive")

attacks = [a for a, s in results["attacks"].items() if s["detectors"]]
attack = st.selectbox("Attack", attacks, key="detection_attack")
s = results["attacks"][attack]
st.markdown(f"**{attack}** ({s['kind']}): {s['success_rate']:.1%} of {s['attacked']} correctly classified inputs "
            f"flipped; mean L2 {s['mean_l2']:.3f}, mean L-inf {s['mean_linf']:.4f}, median logit margin of the "
            f"adversarials {'not recorded' if s['median_margin'] is None else format(s['median_margin'], '.2f')}; "
            f"parameters `{s['params']}`.")
detectors = {d: m for d, m in s["detectors"].items() if d in view["detector"].values}
left, right = st.columns(2)
chart(left, audit_figures.roc_curves(detectors), key="roc")


@st.fragment
def threshold_panel() -> None:
    name = st.selectbox("Detector", list(detectors), key="threshold_detector")
    t = st.slider("Flag inputs whose score is at least", 0.0, 1.0, 0.5, 0.01, key="threshold")
    counts = confusion_at(detectors[name], t)
    st.table(pd.DataFrame({"flagged": [counts["adversarial flagged"], counts["clean flagged"]],
                           "passed": [counts["adversarial missed"], counts["clean passed"]]},
                          index=["adversarial", "clean"]))


with right:
    if detectors:
        threshold_panel()

if results.get("layers", {}).get(attack):
    st.subheader("Which gated layers carry the signal")
    chart(st, audit_figures.layer_auc(results["layers"][attack]), key="layer_auc")

transfer = results.get("transfer") or {}
if transfer:
    st.subheader("Known, unknown and transfer attacks")
    st.markdown("Trained on the row's attack, tested on the column's: the diagonal is the known-attack setting, "
                "the *fgsm* row Lee et al.'s unknown-attack setting (trained on FGSM only).")
    det = st.selectbox("Detector", [d for d in transfer if d in view["detector"].values] or list(transfer),
                       key="transfer_detector")
    chart(st, audit_figures.transfer_heatmap(transfer[det]), key="transfer")

compute = get_analysis(path, sha, "compute")
if compute:
    st.subheader("Compute as an attack surface")
    st.markdown("A dynamic network's cost depends on its input. The compute attack maximises the counted MACs "
                "within an L-inf ball (through the relaxed decisions); figures are the exact counted MACs of the "
                "argmax decisions, before and after.")
    ctable = compute_table(compute)
    st.dataframe(ctable, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3f" if "ratio" in c else "percent")
        for c in ctable.columns if c not in ("eps", "inputs")})
    label = st.selectbox("Budget", list(compute["results"]), index=len(compute["results"]) - 1, key="compute_eps")
    chart(st, audit_figures.compute_histogram(compute, label), key="compute_hist")

clean = get_analysis_table(path, sha, "clean", "rows")
adv = get_analysis_table(path, sha, f"attack-{attack}", "rows")
if clean is not None and adv is not None:
    ungated = run.meta.metrics.get("ungated_macs") or float(clean["macs"].max())
    st.subheader("Counted MACs of clean and attacked inputs")
    chart(st, figures.macs_clean_vs_attacked(clean["macs"] / ungated,
                                             {attack: adv.loc[adv["success"], "macs"] / ungated}), key="macs_cmp")
