"""Threshold searches ("Pruning from Scratch") fast enough to rerun on every slider move.

``StaticSearch``: given one scalar gate per prunable channel, find the global threshold whose
pruned structure (per-layer widths) meets a target MACs reduction. Channels are ranked by gate;
equal gates (clamped learning leaves many exact zeros) by the MACs one channel of their layer
saves, most first; each layer's largest gate is never ranked, so every layer keeps a channel.
``MaskSearch``: the same on a dynamic network's mask banks, against the mean counted MACs of a
cached evaluation set. Both are analytic (widths and counts, no model is built) and exact over
the candidates: the MACs of "prune the first k ranked gates" only fall as k grows, so a binary
search over k finds the structure closest to the target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from models import CostModel, Network, gated_convs

TOLERANCE = 1e-3  # relative distance to the target MACs that counts as meeting it


@dataclass(frozen=True)
class Structure:
    """A pruned structure found by :class:`StaticSearch`."""

    target: float  # requested MACs reduction p against reference_macs (0.5 removes half the MACs)
    widths: list[int]  # per prunable layer
    full_widths: list[int]
    macs: float
    full_macs: float
    reference_macs: float  # what p is measured against: the unexpanded network's MACs (full_macs unless widened)
    params: float
    full_params: float
    # The largest pruned gate (None: nothing pruned, or no gates ranked). Gates below it are pruned and
    # gates above it kept, except each layer's largest gate, which is always kept; of the at_threshold
    # gates equal to it, pruned_at_threshold are pruned, those whose channel saves the most MACs first.
    threshold: float | None
    met: bool  # achieved MACs within the tolerance of the target
    message: str  # a plain sentence on what was achieved
    at_threshold: int = 0  # ranked gates equal to the threshold
    pruned_at_threshold: int = 0  # ... of which pruned (all of them: "gates <= threshold are pruned")

    @property
    def reduction(self) -> float:
        """Achieved MACs reduction against ``reference_macs``."""
        return 1.0 - self.macs / self.reference_macs

    def to_json(self) -> dict:
        return {**self.__dict__, "reduction": self.reduction}


def _closest(values_at, n: int, target: float) -> int:
    """Index in [0, n] whose value (non-increasing in the index) is closest to ``target``;
    a tie goes to the value at or below the target. Binary search: O(log n) evaluations."""
    lo, hi = 0, n
    while lo < hi:  # first index whose value is <= target (n when none is)
        mid = (lo + hi) // 2
        if values_at(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    at = values_at(lo)
    if at > target:  # nothing reaches the target: the smallest value is the closest
        return lo
    if lo > 0 and abs(values_at(lo - 1) - target) < abs(at - target):
        return lo - 1
    return lo


class StaticSearch:
    """Global gate-threshold search over one architecture's prunable layers.

    ``reference_macs``: what a target reduction is measured against; gates learned on a widened
    network (``--expansion``) pass the unexpanded network's MACs, as the reference code does, so
    that p = 0.5 keeps half of the original network's MACs. Default: the searched network's own.

    >>> search = StaticSearch(cost_model(net, (3, 32, 32)), gates)  # gates: one array per layer
    >>> search(0.5).widths
    """

    def __init__(self, costs: CostModel, gates: list[np.ndarray], *, tolerance: float = TOLERANCE,
                 reference_macs: float | None = None):
        full = np.array(costs.source_widths)
        if len(gates) != len(full) or any(len(g) != w for g, w in zip(gates, full)):
            raise ValueError(f"gates have sizes {[len(g) for g in gates]}; the prunable layers have {full.tolist()}")
        values = np.concatenate([np.asarray(g, dtype=np.float64) for g in gates])
        if not np.isfinite(values).all():
            raise ValueError("gate values must be finite (found NaN or infinity)")
        layer = np.repeat(np.arange(len(full)), full)
        full_macs = costs.macs_for_widths(full)
        # MACs one channel of each layer saves (both sides: its conv's output, the next layer's input)
        saving = np.array([full_macs - costs.macs_for_widths(full - np.eye(len(full), dtype=np.int64)[i])
                           for i in range(len(full))])
        kept = np.zeros(len(values), dtype=bool)  # each layer's largest gate: never ranked
        kept[np.cumsum(full) - full + [int(np.argmax(g)) for g in gates]] = True
        ranked = np.flatnonzero(~kept)
        order = ranked[np.lexsort((layer[ranked], -saving[layer[ranked]], values[ranked]))]
        self._sorted = values[order]
        # row k: channels per layer pruned when the first k ranked gates go -> widths = full - row
        onehot = np.zeros((len(order) + 1, len(full)), dtype=np.int64)
        onehot[np.arange(1, len(order) + 1), layer[order]] = 1
        self._pruned = np.cumsum(onehot, axis=0)
        self.costs, self.full_widths, self.tolerance = costs, full, tolerance
        self.full_macs = full_macs
        self.reference_macs = float(full_macs if reference_macs is None else reference_macs)
        if not self.reference_macs > 0:
            raise ValueError(f"reference_macs must be positive, got {reference_macs}")
        self.full_params = costs.params_for_widths(full)

    def widths(self, k: int) -> np.ndarray:
        """Widths after pruning the first ``k`` ranked gates; every layer keeps at least one channel."""
        return self.full_widths - self._pruned[k]

    def __call__(self, target: float) -> Structure:
        """The structure whose MACs are closest to ``(1 - target) * reference MACs``."""
        if not 0.0 <= target < 1.0:
            raise ValueError(f"target reduction must be in [0, 1), got {target}")
        goal = (1.0 - target) * self.reference_macs
        k = _closest(lambda i: self.costs.macs_for_widths(self.widths(i)), len(self._sorted), goal)
        widths, threshold = self.widths(k), float(self._sorted[k - 1]) if k > 0 else None
        macs = self.costs.macs_for_widths(widths)
        met = abs(macs - goal) <= self.tolerance * goal
        achieved = 1.0 - macs / self.reference_macs
        of = "the MACs" if self.reference_macs == self.full_macs else "the unexpanded network's MACs"
        if met:
            message = f"removes {achieved:.1%} of {of} (target {target:.1%})"
        elif macs < goal and k == 0:
            met = True  # the budget is a ceiling the unpruned network already stays under
            message = f"nothing to prune: the network already removes {achieved:.1%} of {of} (target {target:.1%})"
        elif macs > goal and k == len(self._sorted):
            message = (f"target {target:.1%} cannot be met: with one channel left per layer the network "
                       f"still needs {macs / self.reference_macs:.1%} of {of} (removes {achieved:.1%})")
        else:
            message = f"target {target:.1%} falls between two structures; the closest removes {achieved:.1%} of {of}"
        return Structure(
            target=target, widths=widths.tolist(), full_widths=self.full_widths.tolist(), macs=macs,
            full_macs=self.full_macs, reference_macs=self.reference_macs, params=self.costs.params_for_widths(widths),
            full_params=self.full_params,
            threshold=threshold, met=bool(met), message=message,
            at_threshold=int((self._sorted == threshold).sum()) if k > 0 else 0,
            pruned_at_threshold=int((self._sorted[:k] == threshold).sum()) if k > 0 else 0,
        )


def uniform_structure(costs: CostModel, target: float, *, tolerance: float = TOLERANCE) -> Structure:
    """Every prunable layer scaled by the same factor, the factor chosen to meet ``target``."""
    full = np.array(costs.source_widths)
    steps = 4096  # candidate factors s/steps
    search = _closest(lambda s: costs.macs_for_widths(np.maximum(np.round(full * (1 - s / steps)), 1)),
                      steps, (1.0 - target) * costs.macs_for_widths(full))
    widths = np.maximum(np.round(full * (1 - search / steps)), 1).astype(int)
    macs, full_macs = costs.macs_for_widths(widths), costs.macs_for_widths(full)
    goal = (1.0 - target) * full_macs
    return Structure(
        target=target, widths=widths.tolist(), full_widths=full.tolist(), macs=macs, full_macs=full_macs,
        reference_macs=full_macs,
        params=costs.params_for_widths(widths), full_params=costs.params_for_widths(full), threshold=None,
        met=bool(abs(macs - goal) <= tolerance * goal),
        message=f"every layer at x{1 - search / steps:.3f} of its width removes {1 - macs / full_macs:.1%} of the MACs",
    )


@dataclass(frozen=True)
class MaskThreshold:
    """A mask-bank threshold found by :class:`MaskSearch` (or :func:`refined_mask_threshold`)."""

    target: float  # requested reduction of the mean counted MACs vs. the ungated network
    threshold: float  # mask entries below it are set to 0 (0.0: nothing changed)
    predicted_ratio: float  # mean counted MACs / ungated MACs, with the cached decisions
    unthresholded_ratio: float  # the same before thresholding
    met: bool  # the evaluated ratio where there is one, else the predicted, within the tolerance of the target
    message: str
    evaluated_ratio: float | None = None  # the same with the thresholded model's own decisions (None: not run)
    rounds: int = 0  # searches on the thresholded model's own decisions (refined_mask_threshold)


class MaskSearch:
    """Global threshold on a dynamic network's mask banks, against a cached evaluation set.

    The prediction keeps each input's cached actions (``paths``); thresholding can change later
    decisions, so evaluate the thresholded model (:func:`threshold_masks`) for the real figures;
    :func:`refined_mask_threshold` searches again on those until the choice settles.
    """

    def __init__(self, costs: CostModel, banks: list[np.ndarray], paths: np.ndarray, *, tolerance: float = TOLERANCE):
        if paths.ndim != 2 or paths.shape[1] != len(banks):
            raise ValueError(f"paths {paths.shape} do not match {len(banks)} mask banks")
        self.costs, self.tolerance = costs, tolerance
        self._banks = [np.asarray(b, dtype=np.float64) for b in banks]
        if any(b.ndim != 2 or not np.isfinite(b).all() for b in self._banks):
            raise ValueError("mask banks must be finite (K, C) arrays (found NaN, infinity or another shape)")
        actions = [b.shape[0] for b in self._banks]
        if not np.issubdtype(paths.dtype, np.integer) or (paths < 0).any() or (paths >= np.array(actions)).any():
            raise ValueError(f"paths must hold action indices in [0, K) per layer (K = {actions})")
        self._paths = [torch.from_numpy(np.ascontiguousarray(paths[:, g])) for g in range(len(banks))]
        positive = np.concatenate([b[b > 0] for b in self._banks])
        self._candidates = np.concatenate([[0.0], np.unique(positive)])  # threshold = candidates[i]

    def with_paths(self, paths: np.ndarray) -> "MaskSearch":
        """The same search over other decisions of the same evaluation set (e.g. a thresholded model's)."""
        return MaskSearch(self.costs, self._banks, paths, tolerance=self.tolerance)

    def ratio(self, threshold: float) -> float:
        """Mean counted MACs ratio with entries < ``threshold`` set to 0 (cached decisions)."""
        t = max(threshold, np.finfo(np.float64).tiny)  # threshold 0 still skips exact zeros
        active = [torch.from_numpy((b >= t).sum(axis=1))[p] for b, p in zip(self._banks, self._paths)]
        return float(self.costs.dynamic_macs(active).mean()) / self.costs.ungated_macs

    def __call__(self, target: float) -> MaskThreshold:
        if not 0.0 <= target < 1.0:
            raise ValueError(f"target reduction must be in [0, 1), got {target}")
        goal = 1.0 - target
        i = _closest(lambda j: self.ratio(self._candidates[j]), len(self._candidates) - 1, goal)
        t = float(self._candidates[i])
        ratio, base = self.ratio(t), self.ratio(0.0)
        met = abs(ratio - goal) <= self.tolerance * goal
        if base <= goal:
            message = f"the model already uses {base:.1%} of the ungated MACs; no threshold needed"
        elif met:
            message = f"threshold {t:.4g}: predicted {ratio:.1%} of the ungated MACs"
        else:
            message = (f"target reduction {target:.1%} not met exactly: threshold {t:.4g} gives a reduction of "
                       f"{1 - ratio:.1%} (keeps {ratio:.1%} of the ungated MACs)")
        return MaskThreshold(target=target, threshold=t, predicted_ratio=ratio, unthresholded_ratio=base,
                             met=bool(met or base <= goal), message=message)


def mask_banks(model: Network) -> list[np.ndarray]:
    """The (K, C) mask bank of every gated layer, as numpy arrays."""
    return [g.bank.weight.detach().cpu().numpy() for g in gated_convs(model)]


def channel_gates(model: Network) -> list[np.ndarray]:
    """The learned scalar gate of every prunable layer's channels (pruning from scratch)."""
    from models import prunable_convs

    layers = prunable_convs(model)
    missing = [i for i, c in enumerate(layers) if c.gate is None]
    if missing:
        raise ValueError(f"prunable layers {missing} have no channel gates; learn gates first (gatescope prune learn-gates)")
    return [c.gate.detach().cpu().numpy() for c in layers]


def threshold_masks(model: Network, threshold: float) -> Network:
    """A copy of ``model`` whose mask entries below ``threshold`` are 0 (the original is untouched)."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for g in gated_convs(pruned):
            g.bank.weight[g.bank.weight < threshold] = 0.0
    return pruned


def importance_gates(model: Network) -> list[np.ndarray]:
    """Gate values for a network without learned gates: |BN scale| of each prunable channel
    (the "network slimming" criterion), so any run can be searched."""
    from models import prunable_convs

    return [c.bn.weight.detach().abs().cpu().numpy() for c in prunable_convs(model)]


def static_gates(model: Network) -> tuple[list[np.ndarray], str]:
    """The learned channel gates if the run has them, else BN-scale importance; and which."""
    try:
        return channel_gates(model), "learned channel gates"
    except ValueError:
        return importance_gates(model), "BatchNorm scale magnitudes (no learned gates in this run)"


def refined_mask_threshold(model: Network, split, search: MaskSearch, target: float, *, rounds: int = 5,
                           batch_size: int = 250):
    """The mask threshold for ``target`` searched again on the thresholded model's own decisions.

    Thresholding changes later layers' decisions, so a threshold chosen on the cached ones misses
    its target once the model runs (0.2598 of the ungated MACs for 0.25 on the shipped model). Each
    round evaluates the current threshold on ``split`` and searches again on the decisions it made,
    until the choice repeats (at most ``rounds`` evaluations); of the evaluated thresholds the one
    closest to the target wins. Returns the :class:`MaskThreshold` (predicted: cached decisions;
    evaluated: its own) and the thresholded model's outputs on ``split``.

    >>> found, outputs = refined_mask_threshold(model, test_split, MaskSearch(costs, banks, paths), 0.75)
    >>> found.evaluated_ratio
    """
    from .evaluation import collect

    goal, current = 1.0 - target, search(target)
    evaluated: dict[float, tuple[float, object]] = {}  # threshold -> (evaluated ratio, outputs)
    while len(evaluated) < rounds and current.threshold not in evaluated:
        out = collect(threshold_masks(model, current.threshold), split, batch_size=batch_size)
        evaluated[current.threshold] = (float(out.macs_ratio.mean()), out)
        current = search.with_paths(out.paths)(target)
    # closest to the goal; between two as close, the one at or below it
    t = min(evaluated, key=lambda k: (abs(evaluated[k][0] - goal), evaluated[k][0] > goal))
    ratio, out = evaluated[t]
    predicted, base = search.ratio(t), search.ratio(0.0)
    met = abs(ratio - goal) <= search.tolerance * goal or (t == 0.0 and ratio <= goal)
    tries = f"{len(evaluated)} evaluation{'s' if len(evaluated) > 1 else ''}"
    if t == 0.0 and ratio <= goal:
        message = f"the model already uses {ratio:.1%} of the ungated MACs; no threshold needed"
    elif met:
        message = (f"threshold {t:.4g}: evaluated {ratio:.1%} of the ungated MACs with its own decisions "
                   f"({tries}; the cached decisions predicted {predicted:.1%})")
    else:
        message = (f"target reduction {target:.1%} not met exactly: threshold {t:.4g} gives an evaluated reduction "
                   f"of {1 - ratio:.1%} (keeps {ratio:.1%} of the ungated MACs; {tries}; the cached decisions "
                   f"predicted {predicted:.1%} kept)")
    found = MaskThreshold(target=target, threshold=t, predicted_ratio=predicted, unthresholded_ratio=base,
                          met=bool(met), message=message, evaluated_ratio=ratio, rounds=len(evaluated))
    return found, out


def mask_threshold_curve(model: Network, split, search: MaskSearch, targets, *, batch_size: int = 250) -> list[dict]:
    """Accuracy (without retraining) and counted MACs ratio of the thresholded model per target."""
    from .evaluation import collect

    rows = []
    for p in targets:
        t = search(p)
        out = collect(threshold_masks(model, t.threshold), split, batch_size=batch_size)
        rows.append({"target": p, "threshold": t.threshold, "macs_ratio": float(out.macs_ratio.mean()),
                     "accuracy": out.accuracy})
    return rows
