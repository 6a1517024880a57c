"""Training: an ungated baseline and a dynamic network from one shared pre-training.

Three phases, each its own run folder under the output folder:

1. ``pretrained``: the ungated network trained from random weights;
2. ``baseline``: ``pretrained`` trained ``finetune_epochs`` more, still ungated;
3. ``dynamic``: ``pretrained``'s weights plus decision units and mask banks, trained the same
   ``finetune_epochs`` with a sparsity term, so baseline and dynamic share the same budget.

Every epoch appends a line to the phase's ``train_log.jsonl`` and atomically saves a resumable
state (weights + optimiser in safetensors, counters in JSON); a finished phase is skipped when
the command is run again with the same config.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from models import (
    Network, RunMeta, active_channels, build_model, constrain_, cost_model, gated_convs, load_run,
    save_run, set_tau, update_metrics,
)
from models.files import atomic_write_bytes, atomic_write_json

from .augment import augment_batch
from .datasets import DatasetSplit, load_dataset
from .evaluation import collect, macs_summary
from .report import run_report

PHASES = ("pretrained", "baseline", "dynamic")
STATE_WEIGHTS = "train_state.safetensors"
STATE_META = "train_state.json"
LOG = "train_log.jsonl"


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


class TrainError(Exception):
    """A training run that cannot start or resume; the message says why."""


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
    if len(train_split) == 0 or len(test_split) == 0:
        raise TrainError(f"{config.dataset}: a split has no images")
    metas: dict[str, RunMeta] = {}
    torch.manual_seed(config.seed)
    for phase in PHASES:
        gated = phase == "dynamic"
        model = _new_model(config, train_split, gated=gated)
        if phase != "pretrained":
            model.load_state_dict(load_run(out / "pretrained").model.state_dict(), strict=False)
        metas[phase] = _run_phase(
            phase, model, config, train_split, test_split, out / phase, progress=progress, log=log,
            command=command,
        )
    # the figures that say whether the dynamic network is worth it, kept with it
    report = run_report(load_run(out / "dynamic"), baseline=load_run(out / "baseline"))
    metas["dynamic"] = update_metrics(out / "dynamic", {
        key: report[key] for key in ("baseline", "accuracy_gap", "diversity", "probe_log_probs", "probe_one_hot_paths")
    })
    return metas


def _new_model(config: TrainConfig, split: DatasetSplit, *, gated: bool) -> Network:
    meta = _meta(config, split, gated=gated)
    torch.manual_seed(config.seed)
    return build_model(meta)


def _meta(config: TrainConfig, split: DatasetSplit, *, gated: bool, **extra) -> RunMeta:
    return RunMeta(
        arch=config.arch,
        arch_args={
            "gated": gated, "num_classes": len(split.class_names), "in_channels": split.input_shape[0],
            "num_actions": config.num_actions,
        },
        dataset=config.dataset,
        class_names=list(split.class_names),
        input_shape=list(split.input_shape),
        mean=list(split.mean),
        std=list(split.std),
        **extra,
    )


def _run_phase(
    phase: str, model: Network, config: TrainConfig, train_split: DatasetSplit,
    test_split: DatasetSplit, folder: Path, *, progress: bool, log: Callable[[str], None], command: str,
) -> RunMeta:
    cfg = asdict(config)
    done = folder / "model.json"
    if done.is_file() and not (folder / STATE_META).exists():
        meta = load_run(folder).meta
        if meta.training.get("config") == cfg:
            log(f"{phase}: already trained in {folder}, skipping")
            return meta
        raise TrainError(f"{folder} holds a run trained with another config; choose another output folder")

    epochs = config.pretrain_epochs if phase == "pretrained" else config.finetune_epochs
    base_lr = config.lr if phase == "pretrained" else config.finetune_lr
    optimizer = _optimizer(model, config, base_lr)
    start = _resume(folder, model, optimizer, cfg, log)
    loader_gen = torch.Generator()
    loader = DataLoader(train_split.dataset, batch_size=config.batch_size, shuffle=True, generator=loader_gen, drop_last=True)
    sparsity = _Sparsity(model, config, train_split.input_shape) if phase == "dynamic" else None
    steps = epochs * len(loader)
    t_start = time.perf_counter()
    for epoch in range(start, epochs):
        # every epoch reseeds from (seed, phase, epoch): a resumed run repeats the same samples
        torch.manual_seed(config.seed * 1000 + PHASES.index(phase) * 100 + epoch)
        loader_gen.manual_seed(config.seed * 1000 + PHASES.index(phase) * 100 + epoch)
        tau = config.tau + (config.tau_final - config.tau) * epoch / max(1, epochs - 1)
        set_tau(model, tau, noise=epoch < epochs - config.noise_free_epochs)
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{phase} {epoch + 1}/{epochs}", disable=not progress, leave=False)
        totals = _train_epoch(model, bar, optimizer, sparsity, train_split.augment, epoch * len(loader), steps)
        test = collect(model, test_split, batch_size=config.eval_batch_size)
        record = {
            "phase": phase, "epoch": epoch + 1, "epochs": epochs, "tau": round(tau, 4) if sparsity else None,
            "train_loss": totals["loss"] / totals["n"], "train_sparsity": totals["sparsity"] / totals["n"],
            "train_acc": totals["correct"] / totals["n"], "test_acc": test.accuracy,
            "test_macs_ratio": float(test.macs_ratio.mean()), "seconds": time.perf_counter() - t0,
        }
        _append_log(folder, record)
        _save_state(folder, model, optimizer, cfg, epoch + 1)
        log(
            f"{phase} epoch {epoch + 1}/{epochs}: loss {record['train_loss']:.4f} train acc "
            f"{record['train_acc']:.4f} test acc {test.accuracy:.4f} MACs ratio {record['test_macs_ratio']:.3f} "
            f"({record['seconds']:.1f}s)"
        )

    test = collect(model, test_split, batch_size=config.eval_batch_size)
    metrics = {"test_accuracy": test.accuracy, "test_images": len(test.labels), "macs_ratio": macs_summary(test),
               "ungated_macs": test.ungated_macs}
    training = {"config": cfg, "phase": phase, "seed": config.seed, "tau": [config.tau, config.tau_final],
                "epochs": epochs, "command": command, "seconds": time.perf_counter() - t_start,
                "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    meta = save_run(folder, model, _meta(config, train_split, gated=phase == "dynamic", training=training, metrics=metrics))
    (folder / STATE_WEIGHTS).unlink(missing_ok=True)
    (folder / STATE_META).unlink(missing_ok=True)
    log(f"{phase}: saved {folder} (test accuracy {test.accuracy:.4f})")
    return meta


def _train_epoch(model, batches, optimizer, sparsity, augment: str, first_step: int, steps: int) -> dict:
    """One pass over ``batches`` with cosine-annealed learning rates; returns loss and accuracy sums."""
    model.train()
    totals = {"loss": 0.0, "sparsity": 0.0, "correct": 0, "n": 0}
    for step, (x, y) in enumerate(batches, start=first_step):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
        logits, decisions = model.decide(augment_batch(x, augment))
        loss = F.cross_entropy(logits, y)
        penalty = sparsity(decisions) if sparsity else torch.zeros(())
        optimizer.zero_grad(set_to_none=True)
        (loss + penalty).backward()
        optimizer.step()
        constrain_(model)  # clamp the masks, renormalise the decision rows
        totals["loss"] += loss.item() * len(y)
        totals["sparsity"] += penalty.item() * len(y)
        totals["correct"] += int((logits.argmax(1) == y).sum())
        totals["n"] += len(y)
        if hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{totals['loss'] / totals['n']:.3f}", acc=f"{totals['correct'] / totals['n']:.3f}")
    return totals


def _optimizer(model: Network, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    gate_params = {id(p) for g in gated_convs(model) for p in (*g.decision.parameters(), *g.bank.parameters())}
    weights = [p for p in model.parameters() if id(p) not in gate_params]
    gates = [p for p in model.parameters() if id(p) in gate_params]
    groups = [{"params": weights, "base_lr": lr, "weight_decay": config.weight_decay}]
    if gates:
        groups.append({"params": gates, "base_lr": config.gate_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=lr)


class _Sparsity:
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

    def __call__(self, decisions) -> torch.Tensor:
        c = self.config
        return c.diversity * _negative_information(decisions) + self._sparsity(decisions)

    def _sparsity(self, decisions) -> torch.Tensor:
        c = self.config
        if c.sparsity == "reference":
            masks = torch.cat([d.mask for d in decisions], dim=1)
            return c.lam * (masks.abs().mean() - c.target) ** 2
        with torch.no_grad():
            ratio = self.costs.dynamic_macs(active_channels(decisions)).mean() / self.costs.ungated_macs
        if ratio <= c.target:
            return torch.zeros(())
        return c.lam * sum(w * d.mask.sum(dim=1).mean() for w, d in zip(self.weights, decisions))


def _negative_information(decisions) -> torch.Tensor:
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


def _append_log(folder: Path, record: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOG, "a") as f:
        f.write(json.dumps(record) + "\n")


def _save_state(folder: Path, model: Network, optimizer: torch.optim.Optimizer, cfg: dict, epoch: int) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{i}.{k}"] = torch.as_tensor(v).contiguous()
    atomic_write_bytes(folder / STATE_WEIGHTS, safetensors.torch.save(tensors))
    atomic_write_json(folder / STATE_META, {"epoch": epoch, "config": cfg, "param_groups": opt["param_groups"]})


def _epoch_of(line: str) -> int:
    """The epoch a log line records; a line cut short by a kill counts as never written."""
    try:
        return int(json.loads(line)["epoch"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return 1 << 30


def _resume(folder: Path, model: Network, optimizer: torch.optim.Optimizer, cfg: dict, log) -> int:
    """Load a saved state if there is one for this config; returns the epoch to start from."""
    meta_file, weights_file = folder / STATE_META, folder / STATE_WEIGHTS
    if not meta_file.is_file():
        (folder / LOG).unlink(missing_ok=True)  # a fresh phase starts a fresh log
        return 0
    state = json.loads(meta_file.read_text())
    if state.get("config") != cfg:
        raise TrainError(f"{meta_file}: an interrupted run with another config; remove {folder} to restart")
    tensors = safetensors.torch.load_file(weights_file)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    opt_state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    epoch = int(state["epoch"])
    lines = (folder / LOG).read_text().splitlines() if (folder / LOG).exists() else []
    kept = [ln for ln in lines if _epoch_of(ln) <= epoch]
    atomic_write_bytes(folder / LOG, "".join(ln + "\n" for ln in kept).encode())
    log(f"{folder.name}: resuming after epoch {epoch}")
    return epoch
