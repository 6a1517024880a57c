"""Pruning from scratch (Wang et al., AAAI 2020): learn channel gates on frozen random weights,
search a structure that meets a MACs budget, build it as a real narrower network and train it
from fresh random weights with the "Scratch-B" budget (epochs scaled by 1 / (1 - p)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from models import Run, RunMeta, build_model, cost_model, create_model, load_run, prunable_convs, save_run
from models.files import atomic_write_json

from .datasets import load_dataset
from .pruning import StaticSearch, Structure, channel_gates, static_gates
from .trainer import Phase, TrainError, run_phase
from .training import adamw, run_meta

STRUCTURE = "structure.json"


@dataclass(frozen=True)
class GateConfig:
    """Gate learning on frozen weights (reference values from the paper)."""

    arch: str = "small_cnn"
    dataset: str = "mnist5k"
    seed: int = 0
    expansion: float = 1.0  # widen every prunable layer by this factor before learning gates
    epochs: int = 10
    lr: float = 0.01  # Adam on the gates only
    lam: float = 0.5  # weight of (mean |g| - r)^2
    r: float = 0.2  # target mean gate value
    batch_size: int = 128
    init_from: str = ""  # a trained ungated run whose weights are frozen instead of random ones


@dataclass(frozen=True)
class ScratchConfig:
    """Training a pruned structure from fresh random weights."""

    base_epochs: int = 20  # budget of the unpruned network; Scratch-B trains base / (1 - p)
    lr: float = 2e-3  # AdamW, cosine-annealed
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0


def default_widths(arch: str, in_channels: int) -> list[int]:
    """The unpruned width of every prunable layer of ``arch``."""
    return [c.conv.out_channels for c in prunable_convs(create_model(arch, gated=False, in_channels=in_channels))]


def learn_gates(
    config: GateConfig, out: str | Path, *, progress: bool = True, log: Callable[[str], None] = print, command: str = "",
) -> RunMeta:
    """Train one gate per prunable channel of a frozen network into the run folder ``out``."""
    train_split, test_split = load_dataset(config.dataset, "train"), load_dataset(config.dataset, "test")
    if config.expansion <= 0:
        raise TrainError(f"expansion must be positive, got {config.expansion}")
    widths = [max(1, round(w * config.expansion)) for w in default_widths(config.arch, train_split.input_shape[0])]
    meta = run_meta(config.arch, train_split, gated=False, channel_gates=True, widths=widths)
    torch.manual_seed(config.seed)
    model = build_model(meta)
    if config.init_from:
        source = load_run(config.init_from)
        if source.meta.arch != config.arch or config.expansion != 1.0:
            raise TrainError(f"{config.init_from}: gates can start from a trained {config.arch} of default width only")
        model.load_state_dict(source.model.state_dict(), strict=False)  # everything but the gates
    for p in model.parameters():
        p.requires_grad_(False)
    gates = [c.gate for c in prunable_convs(model)]
    for g in gates:
        g.requires_grad_(True)

    def penalty(decisions) -> torch.Tensor:
        return config.lam * (torch.cat(gates).abs().mean() - config.r) ** 2

    phase = Phase(
        name="gates", model=model, epochs=config.epochs, seed=config.seed * 1000 + 500, config=asdict(config),
        optimizer=torch.optim.Adam([{"params": gates, "base_lr": config.lr}], lr=config.lr),
        meta=replace(meta, training={"seed": config.seed, "weights": config.init_from or "random, frozen"}),
        penalty=penalty,
    )
    return run_phase(phase, train_split, test_split, Path(out), batch_size=config.batch_size, progress=progress,
                     log=log, command=command)


def reference_macs(run: Run) -> float:
    """The MACs a pruning ratio p of ``run`` is measured against: for learned channel gates, the
    architecture at its default widths (gates learned with ``--expansion`` != 1 sit on a widened
    network, which must shed its extra width too, as in the reference code); for any other run,
    the run's own network."""
    costs = cost_model(run.model, tuple(run.meta.input_shape))
    if not run.meta.arch_args.get("channel_gates"):
        return float(costs.ungated_macs)
    return costs.macs_for_widths(default_widths(run.meta.arch, run.meta.input_shape[0]))


def structure_search(run: Run) -> tuple[StaticSearch, str]:
    """The structure search of ``run`` (learned gates, else BatchNorm-scale importance), its targets
    measured against :func:`reference_macs`; and which ranking it uses. The CLI, the app and
    ``prune build`` all search through this, so p means the same everywhere.

    >>> search, source = structure_search(load_run("runs/gates"))
    >>> search(0.5).widths
    """
    gates, source = static_gates(run.model)
    costs = cost_model(run.model, tuple(run.meta.input_shape))
    return StaticSearch(costs, gates, reference_macs=reference_macs(run)), source


def search_structure(gates_run: str | Path, target: float) -> Structure:
    """The structure meeting ``target`` (MACs reduction of the unexpanded network) from learned gates."""
    run = load_run(gates_run)
    channel_gates(run.model)  # raises when the run has no learned gates
    return structure_search(run)[0](target)


def build_pruned(gates_run: str | Path, target: float, out: str | Path, *, seed: int = 0) -> tuple[Structure, RunMeta]:
    """Search the structure for ``target`` and save it as an untrained, narrower run folder."""
    structure = search_structure(gates_run, target)
    return structure, save_structure(load_run(gates_run).meta, structure, out, seed=seed, origin=str(gates_run))


def save_structure(source: RunMeta, structure: Structure, out: str | Path, *, seed: int = 0, origin: str = "") -> RunMeta:
    """Save ``structure`` as an untrained, ungated run folder of ``source``'s architecture."""
    args = {k: v for k, v in source.arch_args.items() if k not in ("channel_gates", "widths", "num_actions")}
    meta = RunMeta(**{**asdict(source), "arch_args": {**args, "gated": False, "widths": structure.widths},
                      "training": {"stage": "built, untrained", "origin": origin, "seed": seed},
                      "metrics": {"structure": structure.to_json()}})
    torch.manual_seed(seed)
    meta = save_run(out, build_model(meta), meta)
    atomic_write_json(Path(out) / STRUCTURE, structure.to_json())
    return meta


def scratch_b_epochs(structure: dict | None, base_epochs: int) -> int:
    """Scratch-B's budget for a built ``structure`` (its structure.json; None: unpruned):
    ``base_epochs / (1 - p)``, rounded up, with p the structure's target reduction."""
    return math.ceil(base_epochs / (1.0 - (structure["target"] if structure else 0.0)))


def train_pruned(
    built_run: str | Path, out: str | Path, config: ScratchConfig, *, progress: bool = True,
    log: Callable[[str], None] = print, command: str = "",
) -> RunMeta:
    """Train a built structure from fresh random weights for base_epochs / (1 - p) epochs."""
    built = load_run(built_run)
    structure = built.meta.metrics.get("structure")
    target = structure["target"] if structure else 0.0
    epochs = scratch_b_epochs(structure, config.base_epochs)
    train_split, test_split = load_dataset(built.meta.dataset, "train"), load_dataset(built.meta.dataset, "test")
    torch.manual_seed(config.seed)
    model = build_model(built.meta)  # fresh random weights, the built structure
    cfg = {**asdict(config), "built_run": str(built_run), "target": target, "epochs": epochs}
    phase = Phase(
        name="scratch-b", model=model, epochs=epochs, seed=config.seed * 1000 + 600, config=cfg,
        optimizer=adamw(model, config.lr, config.weight_decay, 0.0),
        meta=replace(built.meta, training={"seed": config.seed, "budget": "Scratch-B"},
                     metrics={k: v for k, v in built.meta.metrics.items() if k == "structure"}),
    )
    meta = run_phase(phase, train_split, test_split, Path(out), batch_size=config.batch_size, progress=progress,
                     log=log, command=command)
    if structure:
        atomic_write_json(Path(out) / STRUCTURE, structure)
    return meta
