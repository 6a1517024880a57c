"""The resumable training state: one unit per save, stale temporaries cleaned, older folders still resume."""

import json
import os
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from torch.utils.data import Subset

from analysis import load_dataset
from analysis.trainer import STATE_META, STATE_WEIGHTS, Phase, run_phase
from analysis.training import run_meta
from models import build_model, load_run


class _Kill(Exception):
    pass


@pytest.fixture(scope="module")
def splits():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    return train.with_dataset(Subset(train.dataset, range(96))), test.with_dataset(Subset(test.dataset, range(32)))


def _phase(train_split, before_epoch=None) -> Phase:
    meta = run_meta("small_cnn", train_split, gated=False)
    torch.manual_seed(0)
    model = build_model(meta)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "base_lr": 1e-2}], lr=1e-2)
    return Phase(name="quick", model=model, optimizer=optimizer, epochs=3, seed=0, config={"quick": 1}, meta=meta,
                 before_epoch=before_epoch, eval_batch_size=32)


def _run(folder: Path, splits, before_epoch=None, log=lambda s: None):
    return run_phase(_phase(splits[0], before_epoch), *splits, folder, batch_size=32, progress=False, log=log)


@pytest.fixture(scope="module")
def reference(splits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference") / "run"
    _run(folder, splits)
    return load_run(folder).model.state_dict()


def _assert_same_weights(folder: Path, reference: dict) -> None:
    resumed = load_run(folder).model.state_dict()
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], msg=k)


def test_a_kill_right_after_the_first_rename_of_a_state_save_resumes_to_the_same_weights(
        splits, reference, tmp_path, monkeypatch):
    # the kill lands after the first file of epoch 2's state is renamed into place: whatever else
    # that save renames afterwards never happens
    folder, epoch, real_replace = tmp_path / "run", [0], os.replace

    def replace_then_kill(src, dst):
        real_replace(src, dst)
        if epoch[0] == 1 and Path(dst).name.startswith("train_state"):
            raise _Kill

    monkeypatch.setattr(os, "replace", replace_then_kill)
    with pytest.raises(_Kill):
        _run(folder, splits, before_epoch=lambda e: epoch.__setitem__(0, e))
    monkeypatch.setattr(os, "replace", real_replace)

    messages = []
    _run(folder, splits, log=messages.append)
    assert any("resuming after epoch 2" in m for m in messages), messages
    _assert_same_weights(folder, reference)
    assert [json.loads(s)["epoch"] for s in (folder / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_stale_temporary_state_files_are_removed_once_a_save_completes(splits, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    stale = [folder / f".{STATE_WEIGHTS}.k1ll3d.tmp", folder / f".{STATE_META}.k1ll3d.tmp"]  # a save killed mid-write
    for f in stale:
        f.write_bytes(b"half a file")
    (folder / "notes.tmp").write_text("not ours")

    def stop_after_first_epoch(message):
        if message.startswith("quick epoch 1/"):
            raise _Kill

    with pytest.raises(_Kill):
        _run(folder, splits, log=stop_after_first_epoch)
    assert not any(f.exists() for f in stale), "the completed save of epoch 1 cleans up"
    assert (folder / "notes.tmp").exists()


def test_a_folder_with_the_older_two_file_state_still_resumes(splits, reference, tmp_path):
    folder = tmp_path / "run"

    def stop_after_first_epoch(message):
        if message.startswith("quick epoch 1/"):
            raise _Kill

    with pytest.raises(_Kill):
        _run(folder, splits, log=stop_after_first_epoch)
    # rewrite the state as gatescope wrote it before the one-file state: tensors alone, counters in train_state.json
    with safetensors.safe_open(folder / STATE_WEIGHTS, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(f.metadata()["state"])
    safetensors.torch.save_file(tensors, folder / STATE_WEIGHTS)
    (folder / STATE_META).write_text(json.dumps(state))

    messages = []
    _run(folder, splits, log=messages.append)
    assert any("resuming after epoch 1" in m for m in messages), messages
    _assert_same_weights(folder, reference)
    assert not (folder / STATE_META).exists() and not (folder / STATE_WEIGHTS).exists()
