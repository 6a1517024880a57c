import os

import pytest
from streamlit.testing.v1 import AppTest

from conftest import BASELINE_RUN, REPO

pytestmark = pytest.mark.app


def _pruning_page(monkeypatch, *runs) -> AppTest:
    if runs:
        monkeypatch.setenv("GATESCOPE_RUNS", os.pathsep.join(map(str, runs)))
    else:
        monkeypatch.delenv("GATESCOPE_RUNS", raising=False)
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=180)
    at.run()
    at.switch_page("views/pruning.py").run()
    assert not at.exception
    return at


def _metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def test_dynamic_slider_thresholds_masks_and_labels_accuracy_without_retraining(monkeypatch):
    at = _pruning_page(monkeypatch)
    assert at.title[0].value == "Pruning"
    at.slider(key="mask_target").set_value(0.65).run()
    assert not at.exception
    shown = _metrics(at)
    assert "Accuracy without retraining" in shown
    assert float(shown["Counted MACs (evaluated)"].rstrip("%")) < 40.0  # the default model sits near 43%
    at.slider(key="mask_target").set_value(0.75).run()
    assert float(_metrics(at)["Counted MACs (evaluated)"].rstrip("%")) < 30.0


def test_static_slider_on_an_ungated_run_reports_structure_and_needs_retraining(monkeypatch):
    at = _pruning_page(monkeypatch, BASELINE_RUN)
    assert "BatchNorm scale" in at.caption[0].value
    at.slider(key="static_target").set_value(0.5).run()
    assert not at.exception
    assert _metrics(at)["Accuracy"] == "needs retraining"
    message = [e.value for e in (*at.success, *at.warning)][0]
    assert "removes 50." in message or "removes 49." in message
