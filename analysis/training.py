"""Training recipe: an ungated baseline and a dynamic network from one shared pre-training.

Three phases, each its own run folder under the output folder:

1. ``pretrained``: the ungated network trained from random weights;
2. ``baseline``: ``pretrained`` trained ``finetune_epochs`` more, still ungated;
3. ``dynamic``: ``pretrained``'s weights plus decision units and mask banks, trained the same
   ``finetune_epochs`` with a path-diversity and a sparsity term, so baseline and dynamic
   share the same budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from models import (
    Decision, Network, RunMeta, active_channels, build_model, cost_model, gated_convs, load_run, read_meta, set_tau,
    update_metrics,
)

from . import distributed
from .datasets import DatasetSplit, load_dataset
from .report import run_report
from .trainer import Phase, TrainError, run_phase

PHASES = ("pretrained", "baseline", "dynamic")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in each phase's model.json)."""

    arch: str = "small_cnn"  # registered architecture
    dataset: str = "mnist5k"  # dataset spec (analysis.datasets)
    seed: int = 0
    num_actions: int = 40  # K candidate masks per gated layer
    pretrain_epochs: int = 10  # phase 1, ungated
    finetune_epochs: int = 40  # phases 2 and 3 each
    batch_size: int = 128
    lr: float = 2e-3  # AdamW, cosine-annealed within each phase
    finetune_lr: float = 1e-3
    gate_lr: float = 1e-2  # decision units and mask banks (no weight decay)
    weight_decay: float = 5e-4
    sparsity: str = "macs"  # "macs" (MACs-weighted L1 with a target) or "reference" (the paper's)
    lam: float = 2.0  # weight of the sparsity term
    target: float = 0.5  # "macs": target counted MACs ratio; "reference": r of (mean|m| - r)^2
    diversity: float = 0.1  # weight of the -I(input; action) term that keeps paths varied
    tau: float = 1.0  # Gumbel-softmax temperature at the start of the dynamic phase
    tau_final: float = 0.5  # ... annealed linearly to this by its end
    noise_free_epochs: int = 8  # last epochs of the dynamic phase train on argmax actions
    eval_batch_size: int = 500


def train(
    config: TrainConfig, out: str | Path, *, progress: bool = True, log: Callable[[str], None] = print,
    command: str = "",
) -> dict[str, RunMeta]:
    """Run the three phases into ``out``; returns each phase's saved metadata.

    >>> train(TrainConfig(pretrain_epochs=1, finetune_epochs=1), "runs/quick")
    """
    if config.sparsity not in ("macs", "reference"):
        raise TrainError(f"sparsity is {config.sparsity!r}; expected 'macs' or 'reference'")
    out = Path(out)
    train_split = load_dataset(config.dataset, "train")
    test_split = load_dataset(config.dataset, "test")
    metas: dict[str, RunMeta] = {}
    for phase_name in PHASES:
        phase = _phase(phase_name, config, train_split, out)
        metas[phase_name] = run_phase(
            phase, train_split, test_split, out / phase_name, batch_size=config.batch_size, progress=progress,
            log=log, command=command,
        )
    # the figures that say whether the dynamic network is worth it, kept with it
    report = run_report(load_run(out / "dynamic"), baseline=load_run(out / "baseline"))
    if distributed.is_main():
        update_metrics(out / "dynamic", {
            key: report[key] for key in ("baseline", "accuracy_gap", "diversity", "probe_log_probs", "probe_one_hot_paths")
        })
    distributed.barrier()
    metas["dynamic"] = read_meta(out / "dynamic")
    return metas


def run_meta(arch: str, split: DatasetSplit, **arch_args) -> RunMeta:
    """The metadata of a network of ``arch`` for ``split`` (before training)."""
    return RunMeta(
        arch=arch,
        arch_args={"num_classes": len(split.class_names), "in_channels": split.input_shape[0], **arch_args},
        dataset=split.spec,
        class_names=list(split.class_names),
        input_shape=list(split.input_shape),
        mean=list(split.mean),
        std=list(split.std),
    )


def _phase(name: str, config: TrainConfig, split: DatasetSplit, out: Path) -> Phase:
    gated = name == "dynamic"
    meta = run_meta(config.arch, split, gated=gated, num_actions=config.num_actions)
    meta = RunMeta(**{**asdict(meta), "training": {"seed": config.seed, "tau": [config.tau, config.tau_final]}})
    torch.manual_seed(config.seed)
    model = build_model(meta)
    if name != "pretrained":
        model.load_state_dict(load_run(out / "pretrained").model.state_dict(), strict=False)
    epochs = config.pretrain_epochs if name == "pretrained" else config.finetune_epochs
    lr = config.lr if name == "pretrained" else config.finetune_lr
    phase = Phase(
        name=name, model=model, optimizer=adamw(model, lr, config.weight_decay, config.gate_lr), epochs=epochs,
        seed=config.seed * 1000 + PHASES.index(name) * 100, config=asdict(config), meta=meta,
        eval_batch_size=config.eval_batch_size,
    )
    if gated:
        phase.penalty = _DynamicPenalty(model, config, split.input_shape)

        def before_epoch(epoch: int) -> None:
            tau = config.tau + (config.tau_final - config.tau) * epoch / max(1, epochs - 1)
            set_tau(model, tau, noise=epoch < epochs - config.noise_free_epochs)

        phase.before_epoch = before_epoch
    return phase


def adamw(model: Network, lr: float, weight_decay: float, gate_lr: float) -> torch.optim.Optimizer:
    """AdamW over the weights; decision units and mask banks get ``gate_lr`` and no decay."""
    gate_params = {id(p) for g in gated_convs(model) for p in (*g.decision.parameters(), *g.bank.parameters())}
    weights = [p for p in model.parameters() if id(p) not in gate_params and p.requires_grad]
    gates = [p for p in model.parameters() if id(p) in gate_params]
    groups = [{"params": weights, "base_lr": lr, "weight_decay": weight_decay}]
    if gates:
        groups.append({"params": gates, "base_lr": gate_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr)


class _DynamicPenalty:
    """The extra terms of the dynamic phase: path diversity plus sparsity.

    ``reference``: lam * (mean |selected mask| - r)^2 over all gated channels of the batch.
    ``macs``: lam * sum over gated channels of (the MACs that channel costs / ungated MACs) *
    its mean selected mask value, applied only while the batch's counted MACs ratio is above
    ``target``. Being linear, it drives unneeded entries to exactly 0 (the clamp), which is what
    the counted MACs reward; the reference term is satisfied by uniformly small masks.
    """

    def __init__(self, model: Network, config: TrainConfig, input_shape):
        self.config = config
        self.costs = cost_model(model, tuple(input_shape))
        weights = torch.zeros(len(gated_convs(model)), dtype=torch.float64)
        for layer in self.costs.layers:
            if layer.out_gate is not None:
                weights[layer.out_gate] += layer.unit_macs * layer.in_channels
            if layer.in_gate is not None:
                weights[layer.in_gate] += layer.unit_macs * layer.out_channels
        self.weights = (weights / self.costs.ungated_macs).float()  # (L,) per-channel MACs share

    def __call__(self, decisions: list[Decision]) -> torch.Tensor:
        c = self.config
        return c.diversity * _negative_information(decisions) + self._sparsity(decisions)

    def _sparsity(self, decisions: list[Decision]) -> torch.Tensor:
        c = self.config
        if c.sparsity == "reference":
            masks = torch.cat([d.mask for d in decisions], dim=1)
            return c.lam * (masks.abs().mean() - c.target) ** 2
        with torch.no_grad():
            ratio = self.costs.dynamic_macs(active_channels(decisions)).mean() / self.costs.ungated_macs
        if ratio <= c.target:
            return torch.zeros(())
        return c.lam * sum(w * d.mask.sum(dim=1).mean() for w, d in zip(self.weights, decisions))


def _negative_information(decisions: list[Decision]) -> torch.Tensor:
    """-I(input; action) per gated layer, averaged: mean per-input entropy minus the entropy of
    the batch's mean action distribution. Minimising it keeps each input's choice confident
    and the batch's choices spread, the cure for collapse onto one action."""
    terms = []
    for d in decisions:
        log_p = d.log_probs  # (B, K)
        p = log_p.exp()
        conditional = -(p * log_p).sum(1).mean()
        marginal_p = p.mean(0)
        marginal = -(marginal_p * marginal_p.clamp_min(1e-12).log()).sum()
        terms.append(conditional - marginal)
    return torch.stack(terms).mean()
