import pytest

from conftest import BASELINE_RUN

pytestmark = pytest.mark.app
PAGE = "views/pruning.py"


def _metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def test_dynamic_slider_thresholds_masks_and_labels_accuracy_without_retraining(open_app):
    at = open_app(page=PAGE)
    assert at.title[0].value == "Pruning"
    at.slider(key="mask_target").set_value(0.65).run()
    assert not at.exception
    shown = _metrics(at)
    assert "Accuracy without retraining" in shown
    assert float(shown["Counted MACs (evaluated)"].rstrip("%")) < 40.0  # the default model sits near 43%
    at.slider(key="mask_target").set_value(0.75).run()
    assert float(_metrics(at)["Counted MACs (evaluated)"].rstrip("%")) < 30.0
    counted = next(m for m in at.metric if m.label == "Counted MACs (evaluated)")
    assert counted.proto.delta.endswith(" pt") and counted.proto.delta.startswith("-")  # points, not a relative %
    for warning in at.warning:  # a target not met says the reduction given, not the share kept alone
        assert "not met" not in warning.value or "evaluated reduction of" in warning.value
    assert any(b.label == "Export threshold (JSON)" for b in at.get("download_button"))


def test_static_slider_on_an_ungated_run_reports_structure_and_needs_retraining(open_app):
    at = open_app(BASELINE_RUN, page=PAGE)
    assert "BatchNorm scale" in at.caption[0].value
    at.slider(key="static_target").set_value(0.5).run()
    assert not at.exception
    assert _metrics(at)["Accuracy"] == "needs retraining"
    message = [e.value for e in (*at.success, *at.warning)][0]
    assert "removes 50." in message or "removes 49." in message


def test_build_button_writes_a_loadable_pruned_run_next_to_the_run(open_app, tmp_path):
    import shutil

    from models import cost_model, load_run

    run = tmp_path / "baseline"
    shutil.copytree(BASELINE_RUN, run)
    at = open_app(run, page=PAGE)
    at.slider(key="static_target").set_value(0.4).run()
    at.button(key="build_pruned").click().run()
    assert not at.exception
    built = load_run(tmp_path / "baseline-pruned-p40")
    structure = built.meta.metrics["structure"]
    assert cost_model(built.model, (1, 28, 28)).ungated_macs == structure["macs"]
    assert "gatescope prune train" in at.success[-1].value


def test_static_slider_on_gates_learned_wider_means_the_same_p_as_the_cli(open_app, expanded_gates_run):
    from analysis.scratch import search_structure

    at = open_app(expanded_gates_run, page=PAGE)
    assert "learned channel gates" in at.caption[0].value
    at.slider(key="static_target").set_value(0.5).run()
    assert not at.exception
    message = [e.value for e in (*at.success, *at.warning)][0]
    assert message == search_structure(expanded_gates_run, 0.5).message
    assert "target 50.0%" in message and "of the unexpanded network's MACs" in message


def test_dynamic_slider_evaluates_at_the_target_not_past_it(open_app):
    at = open_app(page=PAGE)
    at.slider(key="mask_target").set_value(0.75).run()
    assert not at.exception
    shown = _metrics(at)
    assert shown["Counted MACs (evaluated)"] == "25.0%"  # the cached decisions alone gave 26.0%
    assert "Predicted from cached decisions" in shown


def _latencies(at) -> dict:
    return {m.label: (m.value, m.proto.delta) for m in at.metric if m.label.startswith("Measured latency")}


def test_static_slider_offers_the_structures_onnx_file_and_its_measured_latency(open_app, offered):
    import onnx

    at = open_app(BASELINE_RUN, page=PAGE)
    at.slider(key="static_target").set_value(0.5).run()
    assert not at.exception
    reduction = float(at.metric[0].proto.delta.strip("-%"))  # "MACs (counted)": -50.1%
    assert float(_metrics(at)["Counted MACs"].rstrip("%")) == pytest.approx(100 - reduction, abs=0.11)
    latency = _latencies(at)
    assert set(latency) == {"Measured latency, batch 1", "Measured latency, batch 64"}
    for value, delta in latency.values():
        assert value.endswith(" ms") and float(value.split()[0]) > 0 and "vs unpruned (" in delta
    graph = onnx.load_from_string(offered["baseline-p50.onnx"]).graph
    weights = {t.name: list(t.dims) for t in graph.initializer}
    widths = [weights[n.input[1]][0] for n in graph.node if n.op_type == "Conv"]
    assert sum(widths) < 16 + 32 + 64 + 64 + 128  # the thinned structure on screen, not the full network
    at.slider(key="static_target").set_value(0.3).run()
    assert offered["baseline-p30.onnx"] != offered["baseline-p50.onnx"]


def test_dynamic_slider_offers_the_thresholded_onnx_file_and_time_next_to_counted_macs(open_app, offered):
    at = open_app(page=PAGE)
    at.slider(key="mask_target").set_value(0.65).run()
    assert not at.exception
    shown = _metrics(at)
    assert shown["Counted MACs"] == shown["Counted MACs (evaluated)"]  # both against the ungated network
    assert all("vs ungated (" in delta for _, delta in _latencies(at).values()) and len(_latencies(at)) == 2
    at.slider(key="mask_target").set_value(0.75).run()
    assert offered["dynamic-mask-threshold-p75.onnx"] != offered["dynamic-mask-threshold-p65.onnx"]
    assert any(b.label == "Export structure (ONNX)" for b in at.get("download_button"))


def test_without_onnxruntime_the_page_says_how_to_install_it(open_app, tmp_path, monkeypatch):
    import shutil
    import sys

    run = tmp_path / "baseline"  # a run the cache has not seen
    shutil.copytree(BASELINE_RUN, run)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    at = open_app(run, page=PAGE)
    assert "onnxruntime is not installed" in at.info[0].value and "pip install" in at.info[0].value
    assert _metrics(at)["Accuracy"] == "needs retraining"  # the rest of the page is unchanged
