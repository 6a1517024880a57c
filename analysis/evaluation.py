"""One pass of a network over a dataset split, and what its decisions say.

``collect`` gathers per input: label, prediction, per-layer action log-probabilities, the argmax
path, active channels per gated layer and counted dynamic MACs. The diagnostics below turn that
into the figures the README and the benchmarks quote (accuracy, MACs distribution, path
diversity, class probes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from models import Network, active_channels, cost_model, gated_convs

from . import distributed
from .datasets import DatasetError, DatasetSplit


class NonFiniteError(ValueError):
    """NaN or infinite inputs, outputs or gate values: reported, never analysed or plotted."""


def check_finite(what: str, values: torch.Tensor, *, first_row: int = 0) -> None:
    """Raise :class:`NonFiniteError` naming the rows of ``values`` (batch first) that hold NaN or inf."""
    bad = ~torch.isfinite(values.reshape(len(values), -1)).all(1)
    if bad.any():
        rows = (bad.nonzero().flatten() + first_row).tolist()
        raise NonFiniteError(f"{what} of {len(rows)} input(s) hold NaN or infinite values (rows "
                             f"{', '.join(map(str, rows[:5]))}{', ...' if len(rows) > 5 else ''})")


@dataclass
class Outputs:
    """Per-input results of one pass (N inputs, L gated layers, K actions)."""

    labels: np.ndarray  # (N,) int
    preds: np.ndarray  # (N,) int
    log_probs: np.ndarray  # (N, L, K) float32 action log-probabilities; L = 0 when ungated
    paths: np.ndarray  # (N, L) int argmax action per gated layer
    active: np.ndarray  # (N, L) int active channels per gated layer
    macs: np.ndarray  # (N,) counted MACs of each input (static MACs when ungated)
    ungated_macs: int  # MACs of the same architecture without gates

    @property
    def accuracy(self) -> float:
        return float((self.labels == self.preds).mean())

    @property
    def macs_ratio(self) -> np.ndarray:
        """(N,) counted MACs of each input over the ungated network's MACs."""
        return self.macs / self.ungated_macs


def collect(
    model: Network, split: DatasetSplit, *, batch_size: int = 256, progress: bool = False
) -> Outputs:
    """Run ``model`` (in eval mode) over ``split`` and keep every input's decisions.

    Under torchrun each process runs a contiguous shard and every process gets all rows, in
    the split's order."""
    if len(split) == 0:
        raise DatasetError(f"{split.spec}:{split.split}: no images to evaluate")
    if not distributed.active():
        return _collect(model, split, batch_size, progress)
    part = split.with_dataset(Subset(split.dataset, distributed.shard(len(split))))
    local = _collect(model, part, batch_size, progress and distributed.is_main()) if len(part) else None
    parts = [p for p in distributed.gather(local) if p is not None]
    return Outputs(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in
                      ("labels", "preds", "log_probs", "paths", "active", "macs")}, ungated_macs=parts[0].ungated_macs)


@torch.no_grad()
def _collect(model: Network, split: DatasetSplit, batch_size: int, progress: bool) -> Outputs:
    was_training = model.training
    model.eval()
    costs = cost_model(model, split.input_shape)
    gated = bool(gated_convs(model))
    device = model.mean.device
    labels, preds, log_probs, paths, active, macs = [], [], [], [], [], []
    loader = DataLoader(split.dataset, batch_size=batch_size, shuffle=False)
    for x, y in tqdm(loader, desc=f"evaluate {split.spec}:{split.split}", disable=not progress, leave=False):
        first = sum(len(a) for a in labels)
        check_finite(f"{split.spec}:{split.split}: the images", x, first_row=first)
        logits, decisions = model.decide(x.to(device))
        check_finite("the network's outputs", logits, first_row=first)
        for i, d in enumerate(decisions):
            check_finite(f"the gate values of gated layer {i}", d.log_probs, first_row=first)
        labels.append(y.numpy())
        preds.append(logits.argmax(1).cpu().numpy())
        if gated:
            log_probs.append(torch.stack([d.log_probs for d in decisions], 1).cpu().numpy())
            paths.append(torch.stack([d.action for d in decisions], 1).cpu().numpy())
            counts = active_channels(decisions)
            active.append(torch.stack(counts, 1).cpu().numpy())
            macs.append(costs.dynamic_macs(counts).cpu().numpy())
        else:
            macs.append(np.full(len(y), float(costs.static_macs)))
    model.train(was_training)
    n = sum(len(a) for a in labels)
    return Outputs(
        labels=np.concatenate(labels),
        preds=np.concatenate(preds),
        log_probs=np.concatenate(log_probs).astype(np.float32) if gated else np.zeros((n, 0, 0), np.float32),
        paths=np.concatenate(paths) if gated else np.zeros((n, 0), int),
        active=np.concatenate(active) if gated else np.zeros((n, 0), int),
        macs=np.concatenate(macs),
        ungated_macs=costs.ungated_macs,
    )


def macs_summary(out: Outputs) -> dict[str, float]:
    """Mean, min, median and max of the per-input counted MACs ratio."""
    r = out.macs_ratio
    return {"mean": float(r.mean()), "min": float(r.min()), "median": float(np.median(r)), "max": float(r.max())}


def path_diversity(out: Outputs) -> dict[str, object]:
    """How varied the decisions are: distinct actions per layer, the commonest full path."""
    distinct = [int(len(np.unique(out.paths[:, l]))) for l in range(out.paths.shape[1])]
    _, counts = np.unique(out.paths, axis=0, return_counts=True)
    return {
        "distinct_actions_per_layer": distinct,
        "distinct_paths": int(len(counts)),
        "top_path_share": float(counts.max() / len(out.paths)),
    }


def decision_features(out: Outputs) -> np.ndarray:
    """(N, L*K) concatenated per-layer action log-probabilities (DESIGN's decision feature)."""
    return out.log_probs.reshape(len(out.log_probs), -1)


def one_hot_paths(out: Outputs) -> np.ndarray:
    """(N, L*K) one-hot encoding of the argmax path."""
    n, layers = out.paths.shape
    k = out.log_probs.shape[2]
    onehot = np.zeros((n, layers, k), np.float32)
    onehot[np.arange(n)[:, None], np.arange(layers)[None, :], out.paths] = 1.0
    return onehot.reshape(n, -1)


def class_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Test accuracy of a standardised logistic regression predicting the class from features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(train_x, train_y)
    return float(clf.score(test_x, test_y))
