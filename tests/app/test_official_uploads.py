"""Files of the papers' code uploaded with their format: each architecture opens in the app and
recomputes the reference forward pass's accuracy; learned gates drive the Pruning page's slider."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from analysis.datasets import DATA_ENV, load_dataset
from app import state
from models import RunError

from hostile import Payload
from reference_code import normalise, reference

pytestmark = pytest.mark.app


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "UPLOADS", tmp_path / "uploads")
    return tmp_path / "uploads"


def _checkpoint(net) -> bytes:
    buf = io.BytesIO()
    torch.save({"epoch": 9, "state_dict": net.state_dict()}, buf)  # the dynamic-pruning code's checkpoint.pth.tar
    return buf.getvalue()


@pytest.mark.parametrize("arch", ["vgg16", "vgg19", "resnet20", "resnet56"])
def test_a_dynamic_pruning_checkpoint_of_each_architecture_opens_with_the_reference_accuracy(
        uploads, open_app, monkeypatch, cifar_root, arch):
    net = reference(arch, k=5)
    folder = state.store_official_upload("dynamic-pruning", arch, "checkpoint.pth.tar", _checkpoint(net))
    monkeypatch.setenv(DATA_ENV, f"cifar10={cifar_root}")
    at = open_app(folder)
    assert at.title[0].value == f"ref_{arch} on cifar10"
    split = load_dataset(f"cifar10:{cifar_root}", "test")
    x, y = map(torch.stack, zip(*[(img, torch.tensor(label)) for img, label in split.dataset]))
    with torch.no_grad():
        expected = (net(normalise(x))[0].argmax(1) == y).float().mean().item()
    shown = {m.label: m.value for m in at.metric}
    assert shown["Accuracy (recomputed)"] == f"{expected:.2%}"
    assert shown["Gated layers"] == str({"vgg16": 12, "vgg19": 15, "resnet20": 9, "resnet56": 27}[arch])


def test_learned_gates_of_pruning_from_scratch_drive_the_static_slider(uploads, open_app, monkeypatch, cifar_root):
    gates = [torch.rand(w) for w in [16] * 3 + [32] * 3 + [64] * 3]  # resnet20's blocks
    folder = state.store_official_upload("pruning-from-scratch", "resnet20", "channel_gates.pkl", pickle.dumps(gates))
    monkeypatch.setenv(DATA_ENV, f"cifar10={cifar_root}")
    at = open_app(folder, page="views/pruning.py")
    assert "learned channel gates" in at.caption[0].value
    at.slider(key="static_target").set_value(0.3).run()
    assert not at.exception
    message = [e.value for e in (*at.success, *at.warning)][0]
    assert "removes 30." in message or "removes 29." in message


@pytest.mark.parametrize(("fmt", "data", "reason"), [
    ("dynamic-pruning", lambda marker: _checkpoint(reference("resnet20", k=5)),
     "not a dynamic-pruning resnet56 checkpoint: missing"),
    ("dynamic-pruning", lambda marker: b"not a checkpoint", "not a plain weights file|not a readable torch weights file"),
    ("pruning-from-scratch", lambda marker: pickle.dumps([torch.ones(3), Payload(marker)]), "refused"),
])
def test_a_bad_official_upload_is_refused_with_its_reason_and_leaves_nothing(uploads, tmp_path, fmt, data, reason):
    marker = tmp_path / "payload-ran"
    with pytest.raises(RunError, match=reason) as e:
        state.store_official_upload(fmt, "resnet56", "checkpoint.pth.tar", data(marker))
    assert str(uploads) not in str(e.value)
    assert not marker.exists()
    assert not uploads.exists() or not any(uploads.iterdir())
