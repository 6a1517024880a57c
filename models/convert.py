"""Weights saved by ``torch.save`` (``.pt`` / ``.pth``) turned into a run folder.

A pickle can run any code when it is loaded, so these files are read only through
``torch.load(weights_only=True)``, whose unpickler builds tensors and plain containers and
refuses everything else; the result is checked like any other weights and saved as safetensors.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import RunError, RunMeta, model_from_state, save_run
from .files import sha256_bytes

MAX_TORCH_FILE_BYTES = 2 * 2**30


def read_torch_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``-d state dict (or of a checkpoint holding one under
    ``"state_dict"`` / ``"model"``), ``module.`` prefixes of DistributedDataParallel removed."""
    file = Path(file)
    if not file.is_file():
        raise RunError(f"{file}: no such file")
    if file.stat().st_size > MAX_TORCH_FILE_BYTES:
        raise RunError(f"{file}: {file.stat().st_size:,} bytes; the limit is {MAX_TORCH_FILE_BYTES:,}")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the unpickler still refuses what it cannot read
            warnings.simplefilter("ignore")
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = [line.strip() for line in str(e).splitlines() if "unsupported" in line.lower()]
        raise RunError(f"{file}: refused: not a plain weights file (tensors and containers only); a full "
                       f"unpickling could run code in it ({found[0][:200] if found else 'disallowed content'})") from None
    except Exception as e:  # a damaged file makes torch's reader raise almost anything (OSError, zip errors, ...)
        raise RunError(f"{file}: not a readable torch weights file ({e.__class__.__name__}: {str(e)[:200]})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise RunError(f"{file}: expected a state dict (names -> tensors), found {type(obj).__name__}")
    return {k.removeprefix("module."): v.contiguous() for k, v in obj.items()}


def import_torch_weights(file: str | Path, meta: RunMeta, out: str | Path) -> RunMeta:
    """Save the weights of ``file`` with the description ``meta`` as the run folder ``out``."""
    file = Path(file)
    model = model_from_state(meta, read_torch_weights(file), file)
    training = {**meta.training, "imported_from": file.name, "imported_sha256": sha256_bytes(file.read_bytes())}
    return save_run(out, model, RunMeta(**{**asdict(meta), "training": training}))
