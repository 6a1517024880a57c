"""Pruning: a target-reduction slider that reruns the threshold search live."""

import numpy as np
import streamlit as st

from analysis.scratch import save_structure
from app import figures
from app.roots import PathError, resolve_within, write_roots
from app.state import (
    UPLOADS, get_mask_curve, get_mask_threshold, get_reference_onnx, get_static_search, get_structure_onnx,
    get_thresholded_onnx, sidebar, try_outputs,
)
from app.widgets import chart
from models import gated_convs
from models.export import ExportError
from models.files import dumps_json

run, _ = sidebar()
sha, path = run.meta.weights_sha256, str(run.path)
st.title("Pruning")


def measured_time(get_profile, counted: float, *, reference: str, note: str, file_name: str, key: str) -> None:
    """The counted MACs (``counted``: mean per input) next to the measured onnxruntime latency (batch
    1 and 64) of the network on screen, both against the ``reference`` network (the unpruned one,
    ungated), and the ONNX file of the network on screen."""
    try:
        data, timing = get_profile()
        _, reference_macs = get_reference_onnx(path, sha)
    except ExportError as e:
        st.info(f"No ONNX export or measured time here: {e}")
        return
    st.markdown(f"**Counted MACs and measured time** against the {reference} network, in onnxruntime")
    cols = st.columns(4)
    cols[0].metric("Counted MACs", f"{counted / reference_macs:.1%}", help=f"of the {reference} network's")
    for col, row in zip(cols[1:3], timing["rows"]):
        col.metric(f"Measured latency, batch {row['batch_size']}", f"{row['ms']:.3g} ms", delta_color="inverse",
                   delta=f"{row['ms'] / row['reference_ms'] - 1:+.0%} vs {reference} ({row['reference_ms']:.3g} ms)")
    cols[3].download_button("Export structure (ONNX)", data, file_name=file_name, mime="application/octet-stream",
                            key=key)
    st.caption(f"{note} Median of {timing['rows'][0]['calls']} calls per batch size, alternating with the "
               f"{reference} network's, after warm-up calls; onnxruntime {timing['onnxruntime']} on "
               f"{timing['threads']} CPU threads.")


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
                   delta=f"{(pruned.macs_ratio.mean() - outputs.macs_ratio.mean()) * 100:+.1f} pt", delta_color="inverse",
                   help="percentage points of the ungated MACs, against the unthresholded network")
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
    measured_time(lambda: get_thresholded_onnx(path, sha, found.threshold),
                  float(pruned.macs.mean()),
                  reference="ungated", file_name=f"{run.path.name}-mask-threshold-p{round(p * 100)}.onnx",
                  key="export_onnx_mask",
                  note="The file holds this thresholded network with its trained weights and its decisions inside "
                       "the graph; a switched-off channel is still computed there, then multiplied by 0. The ungated "
                       "network (the same architecture without decision units) is what counted MACs are measured "
                       "against.")


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
    measured_time(lambda: get_structure_onnx(path, sha, tuple(s.widths)), s.macs, reference="unpruned",
                  file_name=f"{run.path.name}-p{round(p * 100)}.onnx", key="export_onnx_static",
                  note="The file holds this structure with fresh random weights, as Build writes it (its time does "
                       "not depend on them); export a trained run with `gatescope export RUN OUT.onnx`.")


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
