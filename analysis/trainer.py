"""The training loop shared by every recipe: one *phase* trains one model into one run folder.

Every epoch appends a line to the folder's ``train_log.jsonl`` and atomically saves a
resumable state: one safetensors file holding the weights and optimiser tensors, with the epoch
counter, config and optimiser settings in its metadata, so that weights and counter are
committed by one rename. Running the same phase again resumes after the last saved epoch; a
finished phase with the same config is skipped; a folder holding another config is refused.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from models import Decision, Network, RunMeta, constrain_, load_run, read_meta, save_run
from models.files import atomic_write_bytes, dumps_json

from . import distributed
from .augment import augment_batch
from .datasets import DatasetSplit
from .evaluation import collect, macs_summary
from .path_health import epoch_record

STATE_WEIGHTS = "train_state.safetensors"  # the resumable state, counters in its metadata under "state"
STATE_META = "train_state.json"  # the counters of older gatescope versions, which wrote two files
LOG = "train_log.jsonl"


class TrainError(Exception):
    """A training run that cannot start or resume; the message says why."""


@dataclass
class Phase:
    """One model trained for a number of epochs into one run folder."""

    name: str  # label in logs and progress bars
    model: Network
    optimizer: torch.optim.Optimizer  # param groups carry "base_lr"; cosine-annealed over the phase
    epochs: int
    seed: int  # epoch e reseeds torch and the data order with seed + e
    config: dict  # recorded in model.json; decides whether a folder may be resumed or skipped
    meta: RunMeta  # saved with the weights (training and metrics are filled in)
    penalty: Callable[[list[Decision]], torch.Tensor] | None = None  # added to the cross-entropy
    before_epoch: Callable[[int], None] | None = None  # e.g. sets the Gumbel temperature
    eval_batch_size: int = 500


def run_phase(
    phase: Phase, train_split: DatasetSplit, test_split: DatasetSplit, folder: Path, *, batch_size: int,
    progress: bool = True, log: Callable[[str], None] = print, command: str = "",
) -> RunMeta:
    """Train ``phase`` into ``folder`` (resuming or skipping as the folder says); returns its meta."""
    folder = Path(folder)
    main = distributed.is_main()  # under torchrun only rank 0 logs and writes
    log = log if main else (lambda message: None)
    if (folder / "model.json").is_file() and not (folder / STATE_WEIGHTS).exists():
        meta = load_run(folder).meta
        if meta.training.get("config") == phase.config:
            log(f"{phase.name}: already trained in {folder}, skipping")
            return meta
        raise TrainError(f"{folder} holds a run trained with another config; choose another output folder")

    model, optimizer = phase.model, phase.optimizer
    start = _resume(folder, model, optimizer, phase.config, log, write=main)
    distributed.barrier()  # every process has read the state before anyone writes again
    order, sampler, net = torch.Generator(), None, model.decide
    if distributed.active():  # one share of every global batch per process; gradients averaged by DDP
        sampler = DistributedSampler(train_split.dataset, shuffle=True, seed=phase.seed, drop_last=True)
        batch_size = max(1, batch_size // distributed.world())
        net = DistributedDataParallel(_Decider(model))
    loader = DataLoader(train_split.dataset, batch_size=batch_size, shuffle=sampler is None,
                        generator=order if sampler is None else None, sampler=sampler, drop_last=True)
    if len(loader) == 0:
        raise TrainError(f"{train_split.spec}: {len(train_split)} training images, fewer than one batch of {batch_size}")
    steps = phase.epochs * len(loader)
    t_start = time.perf_counter()
    for epoch in range(start, phase.epochs):
        # every epoch reseeds: a resumed run repeats exactly the samples and noise it would have seen
        torch.manual_seed(phase.seed + epoch + 7919 * distributed.rank())  # rank 0: as in one process
        order.manual_seed(phase.seed + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        if phase.before_epoch:
            phase.before_epoch(epoch)
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{phase.name} {epoch + 1}/{phase.epochs}", disable=not (progress and main), leave=False)
        totals = _train_epoch(model, net, bar, optimizer, phase.penalty, train_split.augment, epoch * len(loader), steps)
        test = collect(model, test_split, batch_size=phase.eval_batch_size)
        record = {
            "phase": phase.name, "epoch": epoch + 1, "epochs": phase.epochs,
            "train_loss": totals["loss"] / totals["n"], "train_penalty": totals["penalty"] / totals["n"],
            "train_acc": totals["correct"] / totals["n"], "test_acc": test.accuracy,
            "test_macs_ratio": float(test.macs_ratio.mean()), "seconds": time.perf_counter() - t0,
            # per-gate entropy, I(class; action) and utilisation of this evaluation (gated phases only)
            **epoch_record(test.log_probs, test.paths, test.labels),
        }
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise TrainError(f"{phase.name} epoch {epoch + 1}: {', '.join(bad)} not finite; training diverged "
                             f"(try a lower learning rate)")
        if main:
            _append_log(folder, record)
            _save_state(folder, model, optimizer, phase.config, epoch + 1)
        distributed.barrier()
        log(
            f"{phase.name} epoch {epoch + 1}/{phase.epochs}: loss {record['train_loss']:.4f} train acc "
            f"{record['train_acc']:.4f} test acc {test.accuracy:.4f} MACs ratio {record['test_macs_ratio']:.3f} "
            f"({record['seconds']:.1f}s)"
        )

    test = collect(model, test_split, batch_size=phase.eval_batch_size)
    metrics = {**phase.meta.metrics, "test_accuracy": test.accuracy, "test_images": len(test.labels),
               "macs_ratio": macs_summary(test), "ungated_macs": test.ungated_macs}
    training = {**phase.meta.training, "config": phase.config, "phase": phase.name, "epochs": phase.epochs,
                "command": command, "seconds": time.perf_counter() - t_start,
                "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    if distributed.active():
        training["processes"] = distributed.world()
    if main:
        save_run(folder, model, replace(phase.meta, training=training, metrics=metrics))
        (folder / STATE_WEIGHTS).unlink(missing_ok=True)
        (folder / STATE_META).unlink(missing_ok=True)
        _remove_stale_temporaries(folder)
    distributed.barrier()
    meta = read_meta(folder)
    log(f"{phase.name}: saved {folder} (test accuracy {test.accuracy:.4f})")
    return meta


class _Decider(torch.nn.Module):
    """``model.decide`` as a forward, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: Network):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.decide(x)


def _train_epoch(model, net, batches, optimizer, penalty, augment: str, first_step: int, steps: int) -> dict:
    """One pass over ``batches`` with cosine-annealed learning rates; returns loss and accuracy sums.
    ``net`` is ``model.decide``, or its DistributedDataParallel wrapper under torchrun."""
    model.train()
    totals = {"loss": 0.0, "penalty": 0.0, "correct": 0, "n": 0}
    for step, (x, y) in enumerate(batches, start=first_step):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
        logits, decisions = net(augment_batch(x, augment))
        loss = F.cross_entropy(logits, y)
        extra = penalty(decisions) if penalty else torch.zeros(())
        optimizer.zero_grad(set_to_none=True)
        (loss + extra).backward()
        optimizer.step()
        constrain_(model)  # clamp masks and gates, renormalise decision rows
        totals["loss"] += loss.item() * len(y)
        totals["penalty"] += extra.item() * len(y)
        totals["correct"] += int((logits.argmax(1) == y).sum())
        totals["n"] += len(y)
        if hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{totals['loss'] / totals['n']:.3f}", acc=f"{totals['correct'] / totals['n']:.3f}")
    return totals


def _append_log(folder: Path, record: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOG, "a") as f:
        f.write(dumps_json(record, indent=None) + "\n")


def _save_state(folder: Path, model: Network, optimizer: torch.optim.Optimizer, cfg: dict, epoch: int) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{i}.{k}"] = torch.as_tensor(v).contiguous()
    state = json.dumps({"epoch": epoch, "config": cfg, "param_groups": opt["param_groups"]}, allow_nan=False)
    atomic_write_bytes(folder / STATE_WEIGHTS, safetensors.torch.save(tensors, metadata={"state": state}))
    (folder / STATE_META).unlink(missing_ok=True)  # an older version's counters, superseded by the line above
    _remove_stale_temporaries(folder)


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete what earlier saves killed mid-write left (``.train_state.*.tmp``); this save is complete,
    and only one trainer writes a folder."""
    for name in (STATE_WEIGHTS, STATE_META):
        for tmp in folder.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _read_state(weights_file: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The counters and tensors of a saved state; counters from the file's metadata, or from the
    ``train_state.json`` beside it that gatescope versions before the one-file state wrote."""
    try:
        with safetensors.safe_open(weights_file, "pt") as f:
            raw = (f.metadata() or {}).get("state")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise TrainError(f"{weights_file}: not a readable training state ({str(e)[:200]}); "
                         f"remove it to restart the phase") from None
    source = weights_file
    if raw is None:
        source = weights_file.with_name(STATE_META)
        if not source.is_file():
            raise TrainError(f"{weights_file}: no \"state\" metadata and no {STATE_META} beside it; "
                             f"remove it to restart the phase")
        raw = source.read_text()
    try:
        state = json.loads(raw)
        int(state["epoch"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise TrainError(f"{source}: the saved epoch counter is unreadable; remove {weights_file} "
                         f"to restart the phase") from None
    return state, tensors


def _epoch_of(line: str) -> int:
    """The epoch a log line records; a line cut short by a kill counts as never written."""
    try:
        return int(json.loads(line)["epoch"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return 1 << 30


def _resume(folder: Path, model: Network, optimizer: torch.optim.Optimizer, cfg: dict, log, *, write: bool = True) -> int:
    """Load a saved state if there is one for this config; returns the epoch to start from.
    ``write``: whether this process tidies the log (rank 0 only under torchrun)."""
    weights_file = folder / STATE_WEIGHTS
    if not weights_file.is_file():
        if write:
            (folder / LOG).unlink(missing_ok=True)  # a fresh phase starts a fresh log
        return 0
    state, tensors = _read_state(weights_file)
    if state.get("config") != cfg:
        raise TrainError(f"{weights_file}: an interrupted run with another config; remove {folder} to restart")
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
    if write:
        atomic_write_bytes(folder / LOG, "".join(ln + "\n" for ln in kept).encode())
    log(f"{folder.name}: resuming after epoch {epoch}")
    return epoch
