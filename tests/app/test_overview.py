import json
import shutil

import pytest

from conftest import DEFAULT_RUN

pytestmark = pytest.mark.app


def test_overview_opens_on_the_default_model(open_app):
    at = open_app()
    assert at.title[0].value == "small_cnn on mnist5k"
    labels = {m.label: m.value for m in at.metric}
    recorded = json.loads((DEFAULT_RUN / "model.json").read_text())["metrics"]
    assert labels["Accuracy (recomputed)"] == f"{recorded['test_accuracy']:.2%}"
    assert labels["Mean counted MACs"] == f"{recorded['macs_ratio']['mean']:.1%}"
    assert [s.value for s in at.subheader][:4] == [
        "Per-input cost on the test split (1,000 inputs)", "Measured speed", "Training", "Mask utilisation"]
    assert not [e for e in at.sidebar.expander if e.label.startswith("Data:")]  # mnist5k needs no folder


def test_overview_without_its_data_still_shows_the_card_and_says_what_it_needs(open_app, tmp_path):
    run = tmp_path / "cifar-run"
    shutil.copytree(DEFAULT_RUN, run)
    meta = json.loads((run / "model.json").read_text())
    meta["dataset"] = f"imagefolder:{tmp_path}/absent"
    (run / "model.json").write_text(json.dumps(meta))
    at = open_app(run)
    assert "cannot be used here" in at.warning[0].value and "ROOT/{train,test}" in at.warning[0].value
    assert at.metric[0].label == "Test accuracy (recorded)"


def test_switching_the_split_recomputes_on_train(open_app):
    at = open_app()
    at.sidebar.radio(key="split").set_value("train").run()
    assert not at.exception
    assert at.subheader[0].value == "Per-input cost on the train split (4,000 inputs)"


def test_measured_speed_is_shown_when_the_run_has_it(open_app, tmp_path):
    import torch

    from analysis.speed import measure_speed, save_speed
    from models import load_run

    run_path = tmp_path / "timed"
    shutil.copytree(DEFAULT_RUN, run_path, ignore=shutil.ignore_patterns("analysis", "speed.json"))
    at = open_app(run_path)
    assert "Measured speed" not in [s.value for s in at.subheader]
    assert any("benchmarks/dynamic_speed.py" in c.value for c in at.caption)
    run = load_run(run_path)
    result = measure_speed(run, torch.rand(64 * 3, 1, 28, 28), calls=3)
    assert [r["batch_size"] for r in result["rows"]] == [1, 64] and all(r["executor_ms"] > 0 for r in result["rows"])
    save_speed(run, result)
    at = open_app(run_path)
    assert "Measured speed" in [s.value for s in at.subheader]
    table = next(d.value for d in at.dataframe)
    assert list(table["batch"]) == [1, 64] and table["counted MACs ratio"].between(0, 1).all()
