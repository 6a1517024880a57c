"""Run folders: ``model.safetensors`` (weights only) + ``model.json`` (everything else).

Nothing is ever unpickled. ``model.json`` records the weights' SHA-256, so weights and
metadata that do not belong together (an interrupted or edited save) are refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from .files import atomic_write_bytes, atomic_write_json, sha256_bytes
from .network import Network
from .registry import create_model
from .schema import SchemaError, check_meta, declared_state

WEIGHTS = "model.safetensors"
META = "model.json"
FORMAT = 1  # bumped when model.json changes incompatibly
MAX_META_BYTES = 16 * 2**20
PENDING = ".model.safetensors.pending"  # new weights between committing model.json and renaming them


class RunError(Exception):
    """A run folder that cannot be loaded; the message names the file and the problem."""


@dataclass(frozen=True)
class RunMeta:
    """Everything about a trained network except its weights (serialised to model.json)."""

    arch: str  # registered architecture name
    arch_args: dict[str, Any]  # builder arguments (gated, num_classes, in_channels, ...)
    dataset: str  # dataset spec the network was trained on, e.g. "mnist5k"
    class_names: list[str]
    input_shape: list[int]  # (C, H, W) in pixel space [0, 1]
    mean: list[float]  # per-channel normalisation, applied inside the network
    std: list[float]
    training: dict[str, Any] = field(default_factory=dict)  # config incl. seed, tau, command
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str = ""  # gatescope version that wrote the run
    weights_sha256: str = ""


@dataclass
class Run:
    path: Path
    model: Network
    meta: RunMeta


def package_version() -> str:
    try:
        return metadata.version("gatescope")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_model(meta: RunMeta) -> Network:
    """Construct the (untrained) network a ``RunMeta`` describes."""
    return create_model(meta.arch, **meta.arch_args, mean=tuple(meta.mean), std=tuple(meta.std))


def save_run(path: str | Path, model: Network, meta: RunMeta) -> RunMeta:
    """Write ``model`` and ``meta`` into the run folder ``path``; returns the meta as written."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = safetensors.torch.save(state)
    meta = RunMeta(**{**asdict(meta), "version": package_version(), "weights_sha256": sha256_bytes(data)})
    # model.json is the commit point: killed before it is written, the folder holds the old pair
    # (and a stale PENDING); killed after it, load_run finds the weights it names in PENDING.
    atomic_write_bytes(path / PENDING, data)
    atomic_write_json(path / META, {"format": FORMAT, **asdict(meta)})
    os.replace(path / PENDING, path / WEIGHTS)
    return meta


def update_metrics(path: str | Path, metrics: dict[str, Any]) -> RunMeta:
    """Merge ``metrics`` into a saved run's model.json (weights untouched); returns the new meta."""
    meta = read_meta(path)
    meta = RunMeta(**{**asdict(meta), "metrics": {**meta.metrics, **metrics}})
    atomic_write_json(Path(path) / META, {"format": FORMAT, **asdict(meta)})
    return meta


def read_meta(path: str | Path) -> RunMeta:
    """Read ``model.json`` of a run folder and check it against the schema
    (:mod:`models.schema`) without touching the weights."""
    path = Path(path)
    file = path / META
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder (expected a folder holding {META} and {WEIGHTS})")
    if not file.is_file():
        raise RunError(f"{file}: missing; a run folder holds {META} and {WEIGHTS}")
    if file.stat().st_size > MAX_META_BYTES:
        raise RunError(f"{file}: {file.stat().st_size:,} bytes; a {META} is at most {MAX_META_BYTES:,}")
    try:
        raw = json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise RunError(f"{file}: not valid JSON ({str(e)[:200]})") from None
    if not isinstance(raw, dict):
        raise RunError(f"{file}: expected a JSON object, found {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise RunError(f"{file}: format is {str(raw.get('format'))[:40]!r}; this gatescope reads format {FORMAT}")
    required = [f.name for f in fields(RunMeta) if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if n not in raw]
    if missing:
        raise RunError(f"{file}: missing field(s) {', '.join(missing)}")
    try:
        check_meta(raw)
    except SchemaError as e:
        raise RunError(f"{file}: {e}") from None
    return RunMeta(**{f.name: raw[f.name] for f in fields(RunMeta) if f.name in raw})


def load_run(path: str | Path, *, map_location: str = "cpu") -> Run:
    """Load a run folder: build its architecture and load its weights strictly, in eval mode.

    The declared network's size is checked before the weights file is read, and the weights
    must be finite.

    >>> run = load_run("assets/mnist5k/dynamic")
    >>> logits, decisions = run.model.decide(images)
    """
    path = Path(path)
    meta = read_meta(path)
    file = path / WEIGHTS
    if not file.is_file():
        raise RunError(f"{file}: missing; a run folder holds {META} and {WEIGHTS}")
    declared = _declared(path / META, meta)
    limit = 2 * sum(shape.numel() * dtype.itemsize for shape, dtype in declared.values()) + 2**20
    if file.stat().st_size > limit:
        raise RunError(f"{file}: {file.stat().st_size:,} bytes, far more than the {meta.arch!r} declared in {META} "
                       f"needs; refused without reading it")
    data = file.read_bytes()
    if meta.weights_sha256 and sha256_bytes(data) != meta.weights_sha256 and (path / PENDING).is_file():
        data = (path / PENDING).read_bytes()  # a save_run killed between committing model.json and the rename
    if meta.weights_sha256 and sha256_bytes(data) != meta.weights_sha256:
        raise RunError(f"{file}: SHA-256 differs from {META}'s weights_sha256 (edited or partly written)")
    try:
        state = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise RunError(f"{file}: not a readable safetensors file ({str(e)[:200]})") from None
    return Run(path=path, model=model_from_state(meta, state, file).to(map_location), meta=meta)


def model_from_state(meta: RunMeta, state: dict[str, torch.Tensor], source: Path) -> Network:
    """The network ``meta`` declares, holding ``state`` (checked: names, shapes, finite values), in
    eval mode. ``source`` names the weights in error messages."""
    declared = _declared(source, meta)
    wrong = sorted(set(state) ^ set(declared))
    wrong += [k for k in state if k in declared and tuple(state[k].shape) != tuple(declared[k][0])]
    if wrong:
        raise RunError(f"{source}: weights do not fit {meta.arch!r} as declared in {META} "
                       f"({len(wrong)} missing, extra or misshapen, e.g. {wrong[0][:80]!r})")
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise RunError(f"{source}: weights hold NaN or infinite values (in {', '.join(bad[:3])}"
                       f"{', ...' if len(bad) > 3 else ''})")
    _check_normalisation(meta, state, source)
    model = build_model(meta)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _check_normalisation(meta: RunMeta, state: dict[str, torch.Tensor], source: Path) -> None:
    """model.json's mean and std are the source of truth; the copies the network keeps as buffers
    (and so in the weights) must hold the same values, and the std must be positive."""
    for name, declared in (("std", meta.std), ("mean", meta.mean)):
        stored = [round(v, 6) for v in state[name].flatten().tolist()]
        if name == "std" and not all(v > 0 for v in stored):
            raise RunError(f"{source}: the normalisation std stored in the weights is {stored}; it must be positive")
        expected = torch.tensor(declared, dtype=state[name].dtype)
        if not torch.allclose(state[name].flatten(), expected, rtol=1e-6, atol=0.0):
            raise RunError(f"{source}: the normalisation {name} stored in the weights {stored} differs from "
                           f"{META}'s {list(declared)}; one of the two files was edited or belongs to another run")


def _declared(source: Path, meta: RunMeta) -> dict:
    try:
        return declared_state(meta.arch, meta.arch_args, meta.input_shape)
    except SchemaError as e:
        raise RunError(f"{source}: {e}") from None


def find_runs(root: str | Path, *, max_depth: int = 3) -> list[Path]:
    """Run folders (folders holding model.json) under ``root``, at most ``max_depth`` levels
    down, sorted; links are not followed, so a scan stays inside ``root``."""
    root = Path(root).resolve()
    found, frontier = [], [root]
    for _ in range(max_depth + 1):
        next_frontier = []
        for folder in frontier:
            if (folder / META).is_file():
                found.append(folder)
            try:
                next_frontier += [d for d in folder.iterdir() if d.is_dir() and not d.is_symlink()
                                  and not d.name.startswith(".") and d.name != "analysis"]
            except OSError:
                continue  # unreadable folder: skip it
        frontier = next_frontier
    return sorted(found)
