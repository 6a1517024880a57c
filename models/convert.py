"""Weights saved by ``torch.save`` (``.pt`` / ``.pth``) turned into a run folder.

A pickle can run any code when it is loaded, so these files are read only through
``torch.load(weights_only=True)``, whose unpickler builds tensors and plain containers and
refuses everything else; the result is checked like any other weights and saved as safetensors.
A plain ``pickle.dump`` of tensors (not a torch file) is read by :func:`read_tensor_pickle`,
whose unpickler is as narrow.
"""

from __future__ import annotations

import collections
import io
import pickle
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .checkpoint import RunError, RunMeta, model_from_state, save_run
from .files import sha256_bytes

MAX_TORCH_FILE_BYTES = 2 * 2**30


def read_torch_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``-d state dict (or of a checkpoint holding one under
    ``"state_dict"`` / ``"model"``), ``module.`` prefixes of DistributedDataParallel removed."""
    return state_dict_of(load_tensors_only(file), file)


def load_tensors_only(file: str | Path) -> Any:
    """What ``torch.save`` wrote to ``file``, read by ``torch.load(weights_only=True)``: tensors and
    plain containers only; anything else is refused with a :class:`RunError` naming the file."""
    file = _checked_file(file)
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the unpickler still refuses what it cannot read
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = [line.strip() for line in str(e).splitlines() if "unsupported" in line.lower()]
        raise RunError(f"{file}: refused: not a plain weights file (tensors and containers only); a full "
                       f"unpickling could run code in it ({found[0][:200] if found else 'disallowed content'})") from None
    except Exception as e:  # a damaged file makes torch's reader raise almost anything (OSError, zip errors, ...)
        raise RunError(f"{file}: not a readable torch weights file ({e.__class__.__name__}: {str(e)[:200]})") from None


def state_dict_of(obj: Any, file: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a loaded checkpoint ``obj`` (itself, or under ``"state_dict"`` / ``"model"``)."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise RunError(f"{file}: expected a state dict (names -> tensors), found {type(obj).__name__}")
    return {k.removeprefix("module."): v.contiguous() for k, v in obj.items()}


def read_tensor_pickle(file: str | Path) -> Any:
    """A plain ``pickle.dump`` of tensors in lists, tuples and dicts (how the pruning-from-scratch
    code saves its ``channel_gates.pkl``), read by an unpickler that knows nothing but tensors:
    any other global (a function, a class) is refused, so nothing in the file runs."""
    file = _checked_file(file)
    try:
        with open(file, "rb") as f:
            return _TensorUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise RunError(f"{file}: refused: not a plain pickle of tensors; a full unpickling could run code in it "
                       f"({str(e)[:200]})") from None
    except RunError:
        raise
    except Exception as e:  # truncated or damaged pickles raise EOFError, ValueError, ...
        raise RunError(f"{file}: not a readable pickle of tensors ({e.__class__.__name__}: {str(e)[:200]})") from None


class _TensorUnpickler(pickle.Unpickler):
    """Resolves only the four globals a pickled CPU tensor needs, each to a checked stand-in."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
            ("collections", "OrderedDict"): collections.OrderedDict,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"unsupported global {module}.{name}")
        return allowed[module, name]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("unsupported persistent id")


def _storage_from_bytes(data: Any) -> torch.TypedStorage:
    """A pickled storage holds a ``torch.save`` of itself: read that one tensors-only too."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"a storage's bytes expected, found {type(data).__name__}")
    storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError(f"a storage expected, found {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    """A copy of the tensor viewing ``storage``; requires_grad and backward hooks are dropped."""
    shape_ok = isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
    if not (isinstance(storage, torch.TypedStorage) and isinstance(offset, int) and shape_ok
            and all(isinstance(v, int) for v in (*size, *stride))):
        raise pickle.UnpicklingError("a tensor with malformed storage, offset, size or stride")
    view = torch.empty((0,), dtype=storage.dtype)
    return view.set_(storage._untyped_storage, offset, size, stride).clone()  # set_ checks the bounds


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter's tensor expected, found {type(data).__name__}")
    return data


def _checked_file(file: str | Path) -> Path:
    file = Path(file)
    if not file.is_file():
        raise RunError(f"{file}: no such file")
    if file.stat().st_size > MAX_TORCH_FILE_BYTES:
        raise RunError(f"{file}: {file.stat().st_size:,} bytes; the limit is {MAX_TORCH_FILE_BYTES:,}")
    return file


def import_torch_weights(file: str | Path, meta: RunMeta, out: str | Path) -> RunMeta:
    """Save the weights of ``file`` with the description ``meta`` as the run folder ``out``."""
    file = Path(file)
    model = model_from_state(meta, read_torch_weights(file), file)
    training = {**meta.training, "imported_from": file.name, "imported_sha256": sha256_bytes(file.read_bytes())}
    return save_run(out, model, RunMeta(**{**asdict(meta), "training": training}))
