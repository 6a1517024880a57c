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
