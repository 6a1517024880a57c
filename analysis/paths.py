"""One input's decision path: what every gated layer saw, chose and cost."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models import Network, active_channels, cost_model, gated_convs


@dataclass
class Path:
    """The decisions of one input (L gated layers, K actions)."""

    probs: np.ndarray  # (L, K) action probabilities
    actions: np.ndarray  # (L,) chosen action per gated layer
    masks: list[np.ndarray]  # per gated layer, the chosen mask row (C_l,)
    active: np.ndarray  # (L,) channels left on per gated layer
    layer_names: list[str]  # the costed layers (convs and the classifier)
    layer_macs: np.ndarray  # (layers,) counted MACs of each costed layer for this input
    decision_macs: int
    ungated_macs: int
    class_probs: np.ndarray  # (classes,)

    @property
    def prediction(self) -> int:
        return int(self.class_probs.argmax())

    @property
    def macs(self) -> float:
        return float(self.layer_macs.sum() + self.decision_macs)


@torch.no_grad()
def decision_path(model: Network, x: torch.Tensor) -> Path:
    """The path of a single input ``x`` (1, C, H, W) in [0, 1] through a gated ``model``."""
    if not gated_convs(model):
        raise ValueError("this network has no gated layers, so no decision path")
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one input of shape (1, C, H, W), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("the input contains NaN or infinity")
    model.eval()
    logits, decisions = model.decide(x)
    costs = cost_model(model, tuple(x.shape[1:]))
    active = active_channels(decisions)
    return Path(
        probs=torch.cat([d.log_probs.exp() for d in decisions]).numpy(),
        actions=torch.cat([d.action for d in decisions]).numpy(),
        masks=[d.mask[0].numpy() for d in decisions],
        active=torch.cat(active).numpy(),
        layer_names=[l.name for l in costs.layers],
        layer_macs=costs.layer_macs(active)[0].numpy(),
        decision_macs=costs.decision_macs,
        ungated_macs=costs.ungated_macs,
        class_probs=torch.softmax(logits, 1)[0].numpy(),
    )


def changed_layers(a: Path, b: Path) -> list[int]:
    """Gated layers whose chosen action differs between two paths."""
    return [int(l) for l in np.flatnonzero(a.actions != b.actions)]


def sankey_links(paths: np.ndarray) -> tuple[list[str], list[int], list[int], list[int]]:
    """Sankey data for argmax paths (N, L): node labels "g{l}:a{k}" for the actions used and
    links (source, target, count) between consecutive gated layers."""
    labels: dict[tuple[int, int], int] = {}
    for l in range(paths.shape[1]):
        for k in np.unique(paths[:, l]):
            labels[(l, int(k))] = len(labels)
    source, target, value = [], [], []
    for l in range(paths.shape[1] - 1):
        pairs, counts = np.unique(paths[:, l:l + 2], axis=0, return_counts=True)
        for (a, b), c in zip(pairs, counts):
            source.append(labels[(l, int(a))])
            target.append(labels[(l + 1, int(b))])
            value.append(int(c))
    return [f"g{l}:a{k}" for (l, k) in labels], source, target, value


def path_neighbours(paths: np.ndarray, features: np.ndarray, path: np.ndarray, feature: np.ndarray, *,
                    k: int = 8, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``paths`` (N, L) nearest to ``path`` (L,) in path space: Hamming distance
    over the argmax actions, ties broken by the Euclidean distance of the decision features
    (N, D) to ``feature`` (D,). Returns their indices and Hamming distances, nearest first;
    ``exclude`` drops one row (the query itself when it is in the set)."""
    hamming = (paths != path[None]).sum(axis=1)
    distance = np.linalg.norm(features - feature[None], axis=1)
    order = np.lexsort((distance, hamming))
    if exclude is not None:
        order = order[order != exclude]
    return order[:k], hamming[order[:k]]


def confident_choosers(log_probs: np.ndarray, gate: int, action: int, *, k: int = 8,
                       among: np.ndarray | None = None) -> np.ndarray:
    """Indices of up to ``k`` inputs that choose ``action`` at ``gate`` (argmax of ``log_probs``
    (N, L, K)), most confident first; ``among`` (indices) restricts the candidates, e.g. to a class."""
    rows = np.arange(len(log_probs)) if among is None else np.asarray(among)
    scores = log_probs[rows, gate]  # (n, K)
    chosen = rows[scores.argmax(axis=1) == action]
    confidence = log_probs[chosen, gate, action]
    return chosen[np.argsort(-confidence, kind="stable")[:k]]
