"""Detection: the audited adversarial detectors of a run, from its analysis folder."""

import pandas as pd
import streamlit as st

from analysis.adversarial.protocol import confusion_at
from app import figures
from app.widgets import chart
from app.state import get_analysis, get_analysis_table, missing_analysis, sidebar

run, _ = sidebar()
sha, path = run.meta.weights_sha256, str(run.path)
st.title("Detection")
results = get_analysis(path, sha, "detection")
if results is None:
    st.info(missing_analysis(run, "detection results") + " (About 5 minutes for the shipped model on a 2-core CPU.)")
    st.stop()

rows = [
    {"attack": attack, "success rate": s["success_rate"], "detector": det, "ROC-AUC": m["auc"],
     "AUC 95% CI": f"[{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]", "TPR@5%FPR": m["tpr_at_5fpr"],
     "TPR 95% CI": f"[{m['tpr_at_5fpr_ci'][0]:.3f}, {m['tpr_at_5fpr_ci'][1]:.3f}]", "accuracy": m["accuracy"],
     "clean / adversarial (test)": f"{m['n_clean']} / {m['n_adversarial']}"}
    for attack, s in results["attacks"].items() for det, m in s["detectors"].items()
]
table = pd.DataFrame(rows)
st.caption(f"Successful attacks only; clean and attacked versions of an image on the same side of a "
           f"{results['split']['train']}/{results['split']['test']} split of source images; bootstrap 95% intervals.")
st.dataframe(table, hide_index=True, column_config={
    "success rate": st.column_config.NumberColumn(format="percent"),
    "ROC-AUC": st.column_config.NumberColumn(format="%.3f"), "TPR@5%FPR": st.column_config.NumberColumn(format="%.3f"),
    "accuracy": st.column_config.NumberColumn(format="%.3f")})
st.download_button("Download table (CSV)", table.to_csv(index=False), file_name=f"{run.path.name}-detection.csv",
                   mime="text/csv")

attacks = [a for a, s in results["attacks"].items() if s["detectors"]]
attack = st.selectbox("Attack", attacks, key="detection_attack")
detectors = results["attacks"][attack]["detectors"]
left, right = st.columns(2)
chart(left, figures.roc_curves(detectors), key="roc")


@st.fragment
def threshold_panel() -> None:
    name = st.selectbox("Detector", list(detectors), key="threshold_detector")
    t = st.slider("Flag inputs whose score is at least", 0.0, 1.0, 0.5, 0.01, key="threshold")
    counts = confusion_at(detectors[name], t)
    st.table(pd.DataFrame({"flagged": [counts["adversarial flagged"], counts["clean flagged"]],
                           "passed": [counts["adversarial missed"], counts["clean passed"]]},
                          index=["adversarial", "clean"]))


with right:
    threshold_panel()

if results.get("layers", {}).get(attack):
    st.subheader("Which gated layers carry the signal")
    chart(st, figures.layer_auc(results["layers"][attack]), key="layer_auc")

clean = get_analysis_table(path, sha, "clean", "rows")
adv = get_analysis_table(path, sha, f"attack-{attack}", "rows")
if clean is not None and adv is not None:
    ungated = run.meta.metrics.get("ungated_macs") or float(clean["macs"].max())
    st.subheader("Counted MACs of clean and attacked inputs")
    chart(st, figures.macs_clean_vs_attacked(clean["macs"] / ungated,
                                                   {attack: adv.loc[adv["success"], "macs"] / ungated}), key="macs_cmp")

if results.get("transfer"):
    st.subheader("Transfer between attacks (decision-feature detector)")
    chart(st, figures.transfer_heatmap(results["transfer"]), key="transfer")
a = results.get("adaptive")
if a:
    st.subheader("Adaptive attack")
    text = (f"PGD that also lowers the decision-feature detector's logit (through the relaxed decisions) "
            f"fooled the classifier on {a['success_rate']:.1%} of {a['attacked']} inputs")
    if "auc" in a:
        text += f"; the detector's ROC-AUC falls to {a['auc']:.3f} and {a['evaded_at_5fpr']:.1%} evade it at 5% FPR."
    st.markdown(text)
