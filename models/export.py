"""ONNX export of a network, and onnxruntime sessions to check and time the file.

Static and pruned networks export as they are. A dynamic network exports with its decisions
inside the graph: each gated layer's decision unit, the argmax over its K actions and a Gather of
the chosen mask row, so the file makes the same per-input choices as PyTorch does at inference.
The graph has fixed shapes: a channel whose mask entry is 0 is still computed, then multiplied
by 0 (counted MACs fall, the work onnxruntime does does not).

The exporter is torch's ``torch.export``-based one (``dynamo=True``; the TorchScript exporter is
deprecated), which needs ``onnx`` and ``onnxscript``; checking and timing need ``onnxruntime``.
All three come with ``pip install "gatescope[export]"``. Export runs offline, and the same
network gives byte-identical files.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from types import ModuleType

import numpy as np
import torch

from .network import Network

INPUT, OUTPUT = "images", "logits"  # graph input (B, C, H, W) in pixel space [0, 1]; output (B, classes)
INSTALL = 'pip install "gatescope[export]" (or: pip install onnx onnxscript onnxruntime)'


class ExportError(Exception):
    """An export that cannot be made or does not check out; the message says why."""


def require(module: str) -> ModuleType:
    """Import ``module`` (onnx, onnxscript, onnxruntime) or raise an :class:`ExportError` saying
    how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed; ONNX export needs onnx, onnxscript and onnxruntime: "
                          f"{INSTALL}") from None


# ``torch.export`` sets a process-wide "exporting" flag under which every *other* thread's
# dynamo-disabled torch call (torch.manual_seed, optimiser steps) edits one shared dict: in the app,
# a session exporting ONNX crashed another session's attack (KeyError 'custom'). Exports hold this
# lock; code that may run beside an export in another thread (the app's attacks) holds it too.
EXPORT_LOCK = threading.RLock()


@torch.no_grad()
def export_onnx(model: Network, input_shape: tuple[int, int, int], *, metadata: dict[str, str] | None = None) -> bytes:
    """The serialised ONNX model of ``model`` in eval mode, with a dynamic batch axis; its input is
    named ``images`` (pixel space [0, 1], normalisation inside the graph), its output ``logits``.
    ``metadata`` goes into the file's ``metadata_props``.

    >>> data = export_onnx(load_run("assets/mnist5k/baseline").model, (1, 28, 28))
    """
    for module in ("onnx", "onnxscript"):  # torch.onnx.export(dynamo=True) imports them itself
        require(module)
    was_training = model.training
    model.eval()
    example = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))  # batch 2: not specialised
    try:
        with EXPORT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    except Exception as e:  # the exporter raises many types; the caller needs one
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {str(e).splitlines()[0][:300]}") from e
    finally:
        model.train(was_training)
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def onnx_session(data: bytes, *, threads: int | None = None):
    """An onnxruntime CPU session on the serialised model, on ``threads`` intra-op threads
    (default: as many as torch uses, so that timings compare with torch's)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise ExportError(f"onnxruntime cannot load the model: {str(e).splitlines()[0][:300]}") from None


def onnx_logits(session, images: torch.Tensor) -> np.ndarray:
    """(B, classes) logits of ``images`` (B, C, H, W) from an :func:`onnx_session`."""
    return session.run([OUTPUT], {INPUT: images.detach().cpu().numpy().astype(np.float32)})[0]
