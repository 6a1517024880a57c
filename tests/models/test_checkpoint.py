import json

import pytest
import safetensors.torch
import torch

from models import RunError, create_model, load_run, read_meta, save_run
from models.checkpoint import META, WEIGHTS


def test_a_saved_run_loads_with_identical_weights_and_outputs(tiny_run):
    run = load_run(tiny_run)
    again = load_run(tiny_run)
    x = torch.rand(4, 1, 28, 28)
    assert not run.model.training
    torch.testing.assert_close(run.model(x), again.model(x))
    meta = json.loads((tiny_run / META).read_text())
    for field in ("arch", "arch_args", "dataset", "class_names", "input_shape", "mean", "std",
                  "training", "metrics", "version", "weights_sha256"):
        assert field in meta
    assert meta["version"] and len(meta["weights_sha256"]) == 64


def test_normalisation_travels_with_the_run(tiny_run):
    run = load_run(tiny_run)
    assert run.model.mean.flatten().tolist() == pytest.approx([0.1307])
    assert run.model.std.flatten().tolist() == pytest.approx([0.3081])


def test_missing_folder(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        load_run(tmp_path / "nope")


@pytest.mark.parametrize("name", [META, WEIGHTS])
def test_missing_file_is_named(tiny_run, name):
    (tiny_run / name).unlink()
    with pytest.raises(RunError, match=name.replace(".", r"\.") + ": missing"):
        load_run(tiny_run)


def test_corrupt_json(tiny_run):
    (tiny_run / META).write_text("{not json")
    with pytest.raises(RunError, match="model.json: not valid JSON"):
        load_run(tiny_run)


def test_corrupt_weights(tiny_run):
    meta = json.loads((tiny_run / META).read_text())
    meta["weights_sha256"] = ""  # skip the hash check to reach the parser
    (tiny_run / META).write_text(json.dumps(meta))
    (tiny_run / WEIGHTS).write_bytes(b"\x00" * 64)
    with pytest.raises(RunError, match="model.safetensors: not a readable safetensors file"):
        load_run(tiny_run)


def test_weights_changed_after_saving_are_refused(tiny_run):
    data = bytearray((tiny_run / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (tiny_run / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(RunError, match="SHA-256 differs"):
        load_run(tiny_run)


def test_weights_that_do_not_fit_the_declared_architecture(tiny_run):
    other = create_model("small_cnn", gated=True, num_actions=5)  # K = 5, model.json says 3
    state = {k: v.contiguous() for k, v in other.state_dict().items()}
    (tiny_run / WEIGHTS).write_bytes(safetensors.torch.save(state))
    meta = json.loads((tiny_run / META).read_text())
    meta["weights_sha256"] = ""
    (tiny_run / META).write_text(json.dumps(meta))
    with pytest.raises(RunError, match="do not fit 'small_cnn'"):
        load_run(tiny_run)


def test_unknown_architecture_lists_the_known_ones(tiny_run):
    meta = json.loads((tiny_run / META).read_text())
    meta["arch"] = "resnet21"
    (tiny_run / META).write_text(json.dumps(meta))
    with pytest.raises(RunError, match=r"model\.json: \"arch\" is 'resnet21'; known: ref_resnet20"):
        read_meta(tiny_run)


def test_missing_fields_are_named(tiny_run):
    meta = json.loads((tiny_run / META).read_text())
    del meta["class_names"]
    (tiny_run / META).write_text(json.dumps(meta))
    with pytest.raises(RunError, match="missing field\\(s\\) class_names"):
        read_meta(tiny_run)


def test_saving_again_replaces_both_files_consistently(tiny_run):
    run = load_run(tiny_run)
    with torch.no_grad():
        run.model.fc.bias.add_(1.0)
    save_run(tiny_run, run.model, run.meta)
    torch.testing.assert_close(load_run(tiny_run).model.fc.bias, run.model.fc.bias)
    assert not list(tiny_run.glob(".*.tmp")), "no temporary files are left behind"


def test_find_runs_lists_run_folders_under_a_root(tiny_run, tmp_path):
    from models import find_runs

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / META).write_text("{}")
    (tmp_path / "link").symlink_to(tiny_run.parent)  # links are not followed
    assert find_runs(tmp_path) == sorted([tiny_run.resolve(), (tmp_path / "a" / "b").resolve()])


def _rewrite_weights(run_path, **changed):
    state = {k: v.contiguous() for k, v in load_run(run_path).model.state_dict().items()}
    state.update(changed)
    (run_path / WEIGHTS).write_bytes(safetensors.torch.save(state))
    meta = json.loads((run_path / META).read_text())
    meta["weights_sha256"] = ""  # reach the normalisation check past the hash check
    (run_path / META).write_text(json.dumps(meta))


def test_a_model_json_std_that_disagrees_with_the_weights_is_refused(tiny_run):
    meta = json.loads((tiny_run / META).read_text())
    meta["std"] = [5.0]  # edited by hand; the weights still hold 0.3081
    (tiny_run / META).write_text(json.dumps(meta))
    with pytest.raises(RunError, match=r"model\.safetensors: the normalisation std stored in the weights \[0\.3081\] "
                                       r"differs from model\.json's \[5\.0\]"):
        load_run(tiny_run)


def test_a_zero_std_stored_in_the_weights_is_refused_at_load(tiny_run):
    _rewrite_weights(tiny_run, std=torch.zeros(1, 1, 1, 1))
    with pytest.raises(RunError, match=r"model\.safetensors: the normalisation std stored in the weights is \[0\.0\]; "
                                       r"it must be positive"):
        load_run(tiny_run)


def test_every_shipped_run_agrees_with_its_model_json():
    from conftest import REPO
    from models import find_runs

    runs = find_runs(REPO / "assets")
    assert len(runs) >= 4
    for path in runs:
        run = load_run(path)  # refused if weights and model.json disagree
        assert run.model.std.flatten().tolist() == pytest.approx(run.meta.std, rel=1e-6)
