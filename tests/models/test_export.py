import sys

import numpy as np
import onnx
import pytest
import torch

from models import create_model, gated_convs, list_models
from models.export import ExportError, export_onnx, onnx_logits, onnx_session
from models.registry import builder_defaults


def _images(n: int, shape) -> torch.Tensor:
    """Random images of differing brightness (uniform noise alone pools to nearly one value)."""
    return torch.rand(n, *shape) * torch.rand(n, 1, 1, 1)


def _dynamic(name: str):
    """A gated ``name`` whose choice of mask matters: random mask banks with zero entries, BatchNorm
    statistics from a few random batches (so activations stay near unit scale)."""
    in_channels = builder_defaults(name)["in_channels"]
    model = create_model(name, gated=True, num_classes=10, num_actions=4)
    shape = (in_channels, 28, 28) if in_channels == 1 else (in_channels, 32, 32)
    with torch.no_grad():
        for g in gated_convs(model):
            g.bank.weight.uniform_(0.0, 2.0)
            g.bank.weight[g.bank.weight < 0.6] = 0.0
        for bn in model.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.reset_running_stats()
                bn.momentum = None  # running statistics: the plain average over the batches below
        model.train()
        for _ in range(3):
            model(_images(16, shape))
    return model.eval(), shape


@pytest.mark.parametrize("name", [n if n == "small_cnn" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in list_models()])
def test_every_architecture_exports_with_its_decisions_inside_the_graph(name):
    model, shape = _dynamic(name)
    data = export_onnx(model, shape)
    ops = [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert ops.count("ArgMax") == len(gated_convs(model))  # one decision per gated layer, in the file
    x = _images(5, shape)  # another batch size than the export's example
    with torch.no_grad():
        ours, decisions = model.decide(x)
    theirs = onnx_logits(onnx_session(data), x)
    assert np.abs(theirs - ours.numpy()).max() <= 1e-4 * max(1.0, float(ours.abs().max()))
    paths = torch.stack([d.action for d in decisions], 1)  # (B, L) chosen masks
    assert len({tuple(p) for p in paths.tolist()}) > 1  # inputs took different paths through the same file


def test_export_is_byte_identical_carries_metadata_and_leaves_the_model_as_it_was():
    model = create_model("small_cnn", gated=True, num_classes=10, num_actions=3).train()
    first = export_onnx(model, (1, 28, 28), metadata={"gatescope.arch": "small_cnn"})
    assert model.training  # exported in eval mode, handed back in training mode
    assert export_onnx(model, (1, 28, 28), metadata={"gatescope.arch": "small_cnn"}) == first
    props = {p.key: p.value for p in onnx.load_from_string(first).metadata_props}
    assert props == {"gatescope.arch": "small_cnn"}


@pytest.mark.parametrize("missing", ["onnxscript", "onnx", "onnxruntime"])
def test_a_missing_onnx_package_is_an_export_error_saying_how_to_install_it(missing, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # import now raises ImportError
    model = create_model("small_cnn", gated=False, num_classes=10)
    with pytest.raises(ExportError, match=f"{missing} is not installed.*pip install"):
        onnx_session(export_onnx(model, (1, 28, 28)))  # exporting needs onnx and onnxscript, running onnxruntime


def test_an_export_waits_while_other_torch_work_holds_the_export_lock():
    """torch.export flips a process-wide flag that makes other threads' dynamo-disabled calls
    (torch.manual_seed) race on a shared dict; exports hold EXPORT_LOCK, and so does the app's
    attack code, so the two never overlap."""
    import threading

    from models.export import EXPORT_LOCK

    model = create_model("small_cnn", gated=False, num_classes=10, in_channels=1)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (export_onnx(model, (1, 28, 28)), done.set()))
    with EXPORT_LOCK:
        worker.start()
        assert not done.wait(3.0)  # the export cannot start while the lock is held elsewhere
        torch.manual_seed(0)
    worker.join(120)
    assert done.is_set()
