"""Pruning: a target-reduction slider that reruns the threshold search live."""

import numpy as np
import streamlit as st

from analysis.scratch import save_structure
from app import figures
from app.roots import PathError, resolve_within, write_roots
from app.widgets import chart
from app.state import (
    UPLOADS, get_mask_curve, get_mask_threshold, get_static_search, sidebar, try_outputs,
)
from models import gated_convs
from models.files import dumps_json

run, _ = sidebar()
sha, path = run.meta.weights_sha256, str(run.path)
st.title("Pruning")


@st.fragment
def dynamic_slider() -> None:
    outputs, _ = try_outputs(run, "test")
    base_reduction = 1.0 - float(outputs.macs_ratio.mean())
    p = st.slider("Target reduction of the mean counted MACs", 0.0, 0.95, value=round(base_reduction + 0.1, 2),
                  step=0.01, key="mask_target",
                  help="Mask entries below a global threshold become 0; the threshold is searched to meet the target.")
    found, pruned = get_mask_threshold(path, sha, p)  # re-searched on the thresholded model's own decisions
    (st.success if found.met else st.warning)(found.message)
    cols = st.columns(4)
    cols[0].metric("Threshold", f"{found.threshold:.4g}")
    cols[1].metric("Counted MACs (evaluated)", f"{pruned.macs_ratio.mean():.1%}",
                   delta=f"{pruned.macs_ratio.mean() - outputs.macs_ratio.mean():+.1%}", delta_color="inverse")
    cols[2].metric("Accuracy without retraining", f"{pruned.accuracy:.2%}",
                   delta=f"{(pruned.accuracy - outputs.accuracy) * 100:+.2f} pt")
    cols[3].metric("Predicted from cached decisions", f"{found.predicted_ratio:.1%}")
    st.download_button("Export threshold (JSON)", dumps_json({
        **found.__dict__, "evaluated_ratio": float(pruned.macs_ratio.mean()), "accuracy_without_retraining":
        pruned.accuracy, "run": str(run.path), "weights_sha256": sha}),
        file_name=f"{run.path.name}-mask-threshold-p{round(p * 100)}.json", mime="application/json", key="export_mask")
    labels = [f"gate {i}" for i in range(len(gated_convs(run.model)))]
    chart(st, figures.width_bars(outputs.active.mean(0).tolist(), pruned.active.mean(0).tolist(), labels,
                                       unit="mean active channels"), key="mask_bars")
    curve = get_mask_curve(path, sha, tuple(np.round(np.linspace(0.0, 0.9, 19), 3)))
    chart(st, figures.accuracy_vs_macs(curve, (float(pruned.macs_ratio.mean()), pruned.accuracy),
                                             label="accuracy without retraining"), key="mask_curve")


@st.fragment
def static_slider() -> None:
    search, source = get_static_search(path, sha)
    st.caption(f"Channel ranking: {source}.")
    p = st.slider("Target MACs reduction", 0.0, 0.95, value=0.5, step=0.01, key="static_target")
    s = search(p)
    (st.success if s.met else st.warning)(s.message)
    cols = st.columns(3)
    cols[0].metric("MACs (counted)", f"{s.macs / 1e6:.2f} M", delta=f"{-s.reduction:.1%}", delta_color="inverse")
    cols[1].metric("Parameters", f"{s.params / 1e3:.1f} k", delta=f"{s.params / s.full_params - 1:.1%}",
                   delta_color="inverse")
    cols[2].metric("Accuracy", "needs retraining", help="Build the structure and train it: gatescope prune train")
    labels = [f"layer {i}" for i in range(len(s.widths))]
    chart(st, figures.width_bars(s.full_widths, s.widths, labels), key="static_bars")
    cols = st.columns(2)
    cols[0].download_button("Export structure (JSON)", dumps_json(s.to_json()),
                            file_name=f"{run.path.name}-p{round(p * 100)}.json", mime="application/json")
    out = run.path.parent / f"{run.path.name}-pruned-p{round(p * 100)}"
    if cols[1].button(f"Build a pruned run folder ({out.name})", key="build_pruned"):
        try:
            resolve_within(out, write_roots(UPLOADS))
        except PathError as e:
            st.error(f"Not built: {e}")
            st.stop()
        save_structure(run.meta, s, out, origin=str(run.path))
        st.success(f"Built `{out}` (fresh random weights, untrained). Train it with "
                   f"`gatescope prune train {out} {out}-trained`.")


if gated_convs(run.model):
    _, problem = try_outputs(run, "test")
    if problem:
        st.warning(problem)
        st.stop()
    st.markdown("Thresholding the **mask banks** of this dynamic network. Accuracies are "
                "**without retraining**, on the test split.")
    dynamic_slider()
else:
    st.markdown("Searching a **static structure** for this network; the pruned network must be "
                "trained again (`gatescope prune build` / `prune train`).")
    static_slider()
