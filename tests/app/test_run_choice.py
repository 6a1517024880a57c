import json
import shutil

import pytest

from conftest import DEFAULT_RUN

pytestmark = pytest.mark.app


def test_runs_under_a_root_are_listed(open_app, monkeypatch, tmp_path):
    shutil.copytree(DEFAULT_RUN, tmp_path / "lab" / "mine", ignore=shutil.ignore_patterns("analysis"))
    monkeypatch.setenv("GATESCOPE_ROOTS", str(tmp_path))
    at = open_app(DEFAULT_RUN)
    options = at.sidebar.selectbox(key="run").options
    assert any(o.endswith("lab/mine") for o in options) and any(o.endswith("mnist5k/dynamic") for o in options)


def test_a_broken_run_shows_an_error_and_the_others_keep_working(open_app, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(DEFAULT_RUN, broken, ignore=shutil.ignore_patterns("analysis"))
    (broken / "model.safetensors").write_bytes(b"\x00" * 32)
    at = open_app(broken, DEFAULT_RUN)
    assert "This run cannot be opened" in at.error[0].value and "SHA-256 differs" in at.error[0].value
    at.sidebar.selectbox(key="run").set_value(str(DEFAULT_RUN)).run()
    assert not at.exception and not at.error
    assert at.title[0].value == "small_cnn on mnist5k"


def test_a_foreign_json_in_a_run_is_reported_in_the_page(open_app, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(DEFAULT_RUN, odd, ignore=shutil.ignore_patterns("analysis"))
    meta = json.loads((odd / "model.json").read_text())
    meta["arch"] = "transformer"
    (odd / "model.json").write_text(json.dumps(meta))
    at = open_app(odd)
    assert "known: ref_resnet20, ref_resnet56" in at.error[0].value


def test_a_run_naming_its_dataset_without_a_folder_asks_for_one_under_the_roots(open_app, monkeypatch, tmp_path):
    from PIL import Image

    from analysis.datasets import DATA_ENV

    run = tmp_path / "lab" / "portable"
    shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("analysis", "speed.json"))
    meta = json.loads((run / "model.json").read_text())
    meta["dataset"] = "imagefolder"  # no folder: each machine says where its copy is
    (run / "model.json").write_text(json.dumps(meta))
    digits = tmp_path / "lab" / "digits"
    for split in ("train", "test"):
        for c in range(10):
            (digits / split / str(c)).mkdir(parents=True)
            Image.new("L", (28, 28), 255 if c == 1 else 0).save(digits / split / str(c) / "a.png")
    monkeypatch.setenv(DATA_ENV, "")  # restored after the test: the app sets it for all sessions
    monkeypatch.setenv("GATESCOPE_ROOTS", str(tmp_path / "lab"))
    at = open_app(run)
    assert "imagefolder needs a path" in at.warning[0].value  # the card shows, the data is asked for
    at.sidebar.text_input(key="data_imagefolder").input(str(tmp_path / "elsewhere")).run()
    assert "outside the folders" in at.sidebar.error[0].value
    at.sidebar.text_input(key="data_imagefolder").input(str(digits)).run()
    assert not at.exception and "Using" in at.sidebar.success[0].value
    at.run()
    labels = {m.label: m.value for m in at.metric}
    assert "Accuracy (recomputed)" in labels and at.subheader[0].value.endswith("(10 inputs)")
