import base64
import json

import numpy as np
import pytest

from conftest import BASELINE_RUN, DEFAULT_RUN

pytestmark = pytest.mark.app
PAGE = "views/compare.py"


def _figure(at, key: str) -> dict:
    """The plotly figure (as its JSON spec) of the chart drawn with ``key``."""
    return next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}"))


def _keys(at) -> set[str]:
    return {c.proto.id.rsplit("-", 1)[-1] for c in at.get("plotly_chart")}


def _array(value) -> np.ndarray:
    """A figure's array, which plotly's JSON may hold base64-encoded ({"dtype", "bdata", "shape"})."""
    if isinstance(value, dict) and "bdata" in value:
        shape = [int(n) for n in str(value.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.asarray(value)


def test_dynamic_against_ungated_baseline_shows_both_and_says_why_no_matching(open_app):
    from analysis.outputs_cache import stored_outputs
    from analysis.path_health import utilisation_ratio
    from models import load_run

    at = open_app(DEFAULT_RUN, BASELINE_RUN, page=PAGE)
    assert at.title[0].value == "Compare two runs"
    assert at.selectbox(key="compare_a").value.endswith("mnist5k/dynamic")  # the sidebar's run first
    assert at.selectbox(key="compare_b").value.endswith("mnist5k/baseline")  # and another one second
    recorded = json.loads((DEFAULT_RUN / "model.json").read_text())["metrics"]
    metrics = {m.label: m for m in at.metric}
    assert metrics["Accuracy (A)"].value == f"{recorded['test_accuracy']:.2%}" == "98.60%"
    assert metrics["Accuracy (B)"].value == "98.70%"
    assert metrics["Accuracy (B)"].delta == "+0.10 pt vs A"
    assert metrics["Mean counted MACs (A)"].value == f"{recorded['macs_ratio']['mean']:.1%}"
    assert metrics["Mean counted MACs (B)"].value == "100.0%"
    assert metrics["Mean counted MACs (B)"].delta == f"{(1 - recorded['macs_ratio']['mean']) * 100:+.1f} pt vs A"

    macs = [t for t in _figure(at, "compare_macs")["data"] if t["type"] == "violin"]
    assert [t["name"] for t in macs] == ["A: mnist5k/dynamic", "B: mnist5k/baseline"]
    assert _array(macs[0]["x"]).mean() == pytest.approx(recorded["macs_ratio"]["mean"], rel=1e-5)
    assert np.allclose(_array(macs[1]["x"]), 1.0)
    bars = _figure(at, "compare_utilisation")["data"]
    run = load_run(DEFAULT_RUN)
    expected = utilisation_ratio(stored_outputs(run, "test").paths, 40)
    assert len(bars) == 1 and np.allclose(_array(bars[0]["y"]), expected)  # the ungated run has no bars
    assert any("B: mnist5k/baseline is ungated" in c.value for c in at.caption)
    assert "run B is ungated" in at.info[0].value
    assert "compare_agreement" not in _keys(at) and "compare_heatmap" not in _keys(at)


def test_two_dynamic_runs_that_differ_only_in_action_numbers_agree_on_every_path(open_app, relabelled_runs):
    path_a, path_b, perms = relabelled_runs
    at = open_app(path_a, path_b, page=PAGE)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Whole-path agreement"] == "100.0%" and metrics["Mean per-gate agreement"] == "100.0%"
    assert float(metrics["Chance level (whole path)"].rstrip("%")) < 100
    agreement = _figure(at, "compare_agreement")["data"]
    assert _array(agreement[0]["x"]).tolist() == ["gate 0", "gate 1", "gate 2", "gate 3", "whole path"]
    assert np.allclose(_array(agreement[0]["y"]), 1.0) and (_array(agreement[1]["y"]) < 1).any()
    similarity = _figure(at, "compare_similarity")["data"]
    assert all(np.allclose(_array(t["y"]), 1.0) for t in similarity if t["type"] == "box")
    heat = _figure(at, "compare_heatmap")
    assert np.allclose(np.diag(_array(heat["data"][0]["z"])), 1.0)  # matched pairs on the diagonal
    rows = [int(a[1:].split(" ")[0]) for a in heat["data"][0]["y"]]  # "A2 (31%)": action 2 of A, its share
    assert heat["data"][0]["x"] == [f"B{b}" for b in np.argsort(perms[0])[rows]]  # B's name of each of A's masks

    at.selectbox(key="compare_gate").set_value(3).run()
    assert not at.exception and _figure(at, "compare_heatmap")["layout"]["title"]["text"] == "gate 3"
    at.selectbox(key="compare_b").set_value(at.selectbox(key="compare_a").value).run()
    assert not at.exception and "same run" in at.info[0].value


def test_with_one_run_only_the_page_says_how_to_open_a_second(open_app):
    at = open_app(DEFAULT_RUN, page=PAGE)
    text = at.info[0].value
    assert "Run list" in text and "gatescope app RUN_A RUN_B" in text and "uploaded" in text
    assert not at.get("plotly_chart") and not at.metric


def test_runs_with_other_input_shapes_are_refused_by_name(open_app, tmp_path):
    from models import RunMeta, build_model, save_run

    meta = RunMeta(arch="vgg7", arch_args={"gated": True, "num_classes": 10, "in_channels": 3, "num_actions": 4},
                   dataset="cifar10", class_names=[str(i) for i in range(10)], input_shape=[3, 32, 32],
                   mean=[0.5] * 3, std=[0.25] * 3, training={}, metrics={})
    save_run(tmp_path / "colour", build_model(meta), meta)
    at = open_app(DEFAULT_RUN, tmp_path / "colour", page=PAGE)
    warning = at.warning[0].value
    assert "cannot be compared" in warning and "1x28x28" in warning and "3x32x32" in warning
    assert not at.get("plotly_chart")
