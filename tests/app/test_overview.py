import base64
import json
import shutil

import numpy as np
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


def test_switching_the_split_recomputes_on_train(open_app, tmp_path):
    run = tmp_path / "dynamic"  # a copy: the train split's outputs are stored with the run
    shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("analysis"))
    at = open_app(run)
    at.sidebar.radio(key="split").set_value("train").run()
    assert not at.exception
    assert at.subheader[0].value == "Per-input cost on the train split (4,000 inputs)"
    assert any(f.name.startswith("outputs-train.") for f in (run / "analysis").iterdir())


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
    threads_before = torch.get_num_threads()
    result = measure_speed(run, torch.rand(64 * 3, 1, 28, 28), calls=3, threads=(1, 2))
    assert [(r["threads"], r["batch_size"]) for r in result["rows"]] == [(1, 1), (1, 64), (2, 1), (2, 64)]
    assert all(r["executor_ms"] > 0 and r["masked_cl_ms"] > 0 for r in result["rows"])
    assert all(r["of_ideal"] == pytest.approx(r["masked_cl_ms"] / r["executor_ms"] * r["macs_ratio"]) for r in result["rows"])
    assert torch.get_num_threads() == threads_before  # the measurement leaves torch's setting as it was
    save_speed(run, result)
    at = open_app(run_path)
    assert "Measured speed" in [s.value for s in at.subheader]
    table = next(d.value for d in at.dataframe)
    assert list(table["batch"]) == [1, 64, 1, 64] and table["counted MACs ratio"].between(0, 1).all()
    assert list(table["threads"]) == [1, 1, 2, 2] and (table["of counted ideal (%)"] > 0).all()


def _figure(at, key: str) -> dict:
    """The plotly figure (as its JSON spec) of the chart drawn with ``key``."""
    return next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}"))


def _array(value) -> np.ndarray:
    """A figure's array, which plotly's JSON may hold base64-encoded ({"dtype", "bdata", "shape"})."""
    if isinstance(value, dict) and "bdata" in value:
        shape = [int(n) for n in str(value.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.asarray(value)


def test_path_health_shows_real_numbers_for_the_shipped_run(open_app):
    from analysis import collect
    from analysis.datasets import load_run_dataset
    from analysis.path_health import path_health_table
    from models import load_run

    at = open_app()
    assert "Path health" in [s.value for s in at.subheader]
    table = next(d.value for d in at.dataframe if "mean entropy (bits)" in d.value.columns)
    run = load_run(DEFAULT_RUN)
    out = collect(run.model, load_run_dataset(run.meta, "test"))
    expected = path_health_table(out.log_probs, out.paths, out.labels)
    assert list(table["gate"]) == [0, 1, 2, 3]
    assert table["mean entropy (bits)"].tolist() == pytest.approx(expected["entropy"].tolist())
    assert table["mean entropy (bits)"].between(0.1, np.log2(40)).all()  # neither certain nor uniform
    assert table["I(class; action) (bits)"].between(0.1, np.log2(10)).all()
    assert table["utilisation (max share × K)"].between(1, 40).all() and table["actions used (of 40)"].gt(1).all()
    assert any("predates per-epoch path health" in c.value for c in at.caption)
    assert len(_figure(at, "path_health_bars")["data"]) == 4 + 2  # an entropy box per gate, MI and utilisation bars

    heat = _figure(at, "transitions")["data"][0]
    assert np.allclose(_array(heat["z"]).sum(axis=1), 1.0)  # row shares by default
    at.radio(key="transition_scale").set_value("counts").run()
    at.selectbox(key="transition_layer").set_value(2).run()
    assert not at.exception
    heat = _figure(at, "transitions")["data"][0]
    assert _array(heat["z"]).sum() == 1000 and "gate 3" in _figure(at, "transitions")["layout"]["xaxis"]["title"]["text"]
    assert len(heat["y"]) == expected["actions_used"][2] and len(heat["x"]) == expected["actions_used"][3]


def test_the_per_class_chart_labels_every_class_by_name(open_app):
    at = open_app()
    names = json.loads((DEFAULT_RUN / "model.json").read_text())["class_names"]
    axis = _figure(at, "class_pref")["layout"]["yaxis"]
    assert axis["type"] == "category" and axis["tickvals"] == names and axis["ticktext"] == names


def test_a_log_that_records_path_health_is_plotted_over_epochs(open_app, tmp_path):
    run = tmp_path / "recorded"
    shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("analysis"))
    lines = [json.loads(s) for s in (run / "train_log.jsonl").read_text().splitlines()]
    for r in lines:
        e = r["epoch"]
        r.update(test_entropy=[3.0 - e / 40] * 4, test_mi=[0.5 + e / 40] * 4, test_utilisation=[2.0, 3.0, 4.0, 5.0])
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    at = open_app(run)
    assert not any("predates" in c.value for c in at.caption)
    fig = _figure(at, "path_health_epochs")
    assert len(fig["data"]) == 4 * 3 and [t["name"] for t in fig["data"][:3]] == ["gate 0"] * 3
    assert _array(fig["data"][0]["x"]).tolist() == [r["epoch"] for r in lines]
