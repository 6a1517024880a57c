"""Run folders: ``model.safetensors`` (weights only) + ``model.json`` (everything else).

Nothing is ever unpickled. ``model.json`` records the weights' SHA-256, so weights and
metadata that do not belong together (an interrupted or edited save) are refused.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from .files import atomic_write_bytes, atomic_write_json, sha256_bytes
from .network import Network
from .registry import create_model, list_models

WEIGHTS = "model.safetensors"
META = "model.json"
FORMAT = 1  # bumped when model.json changes incompatibly


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
    atomic_write_bytes(path / WEIGHTS, data)
    atomic_write_json(path / META, {"format": FORMAT, **asdict(meta)})
    return meta


def update_metrics(path: str | Path, metrics: dict[str, Any]) -> RunMeta:
    """Merge ``metrics`` into a saved run's model.json (weights untouched); returns the new meta."""
    meta = read_meta(path)
    meta = RunMeta(**{**asdict(meta), "metrics": {**meta.metrics, **metrics}})
    atomic_write_json(Path(path) / META, {"format": FORMAT, **asdict(meta)})
    return meta


def read_meta(path: str | Path) -> RunMeta:
    """Read and check ``model.json`` of a run folder without touching the weights."""
    path = Path(path)
    file = path / META
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder (expected a folder holding {META} and {WEIGHTS})")
    if not file.is_file():
        raise RunError(f"{file}: missing; a run folder holds {META} and {WEIGHTS}")
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise RunError(f"{file}: expected a JSON object, found {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise RunError(f"{file}: format is {raw.get('format')!r}; this gatescope reads format {FORMAT}")
    required = [f.name for f in fields(RunMeta) if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if n not in raw]
    if missing:
        raise RunError(f"{file}: missing field(s) {', '.join(missing)}")
    meta = RunMeta(**{f.name: raw[f.name] for f in fields(RunMeta) if f.name in raw})
    if meta.arch not in list_models():
        raise RunError(f"{file}: \"arch\" is {meta.arch!r}; known: {', '.join(list_models())}")
    return meta


def load_run(path: str | Path, *, map_location: str = "cpu") -> Run:
    """Load a run folder: build its architecture and load its weights strictly, in eval mode.

    >>> run = load_run("assets/mnist5k/dynamic")
    >>> logits, decisions = run.model.decide(images)
    """
    path = Path(path)
    meta = read_meta(path)
    file = path / WEIGHTS
    if not file.is_file():
        raise RunError(f"{file}: missing; a run folder holds {META} and {WEIGHTS}")
    data = file.read_bytes()
    if meta.weights_sha256 and sha256_bytes(data) != meta.weights_sha256:
        raise RunError(f"{file}: SHA-256 differs from {META}'s weights_sha256 (edited or partly written)")
    try:
        state = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise RunError(f"{file}: not a readable safetensors file ({e})") from None
    try:
        model = build_model(meta)
    except (TypeError, ValueError) as e:
        raise RunError(f"{path / META}: arguments do not build {meta.arch!r} ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:4]
        raise RunError(f"{file}: weights do not fit {meta.arch!r} as declared in {META}: {' '.join(s.strip() for s in first)}") from None
    model.to(map_location).eval()
    return Run(path=path, model=model, meta=meta)


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
