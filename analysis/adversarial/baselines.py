"""The classic detection baselines: kernel density + Bayesian uncertainty (Feinman et al. 2017),
local intrinsic dimensionality (Ma et al. 2018) and Lee et al.'s Mahalanobis confidence without
its input pre-processing (the simplified variant; ``mahalanobis-lee`` is the full recipe).

The math lives in small pure functions (``lid_mle``, ``lid_estimate``, ``class_gaussians``,
``mahalanobis_scores``, ``kd_log_density``, ``mc_dropout_uncertainty``), in torch so that every
score is differentiable for the adaptive attacks, and checked on data where the answer is known.
Hyperparameters the papers tuned (LID's k and minibatch, KD's bandwidth) are chosen on the
validation part of the training side, never on the test side.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import Network

from .detector_base import (
    Detector, DetectorError, _batches, _evaluating, _layer_batches, activations, register_detector, validation_auc,
)

# Feinman et al. used 1.20 (MNIST), 0.26 (CIFAR-10) and 1.00 (SVHN), tuned per dataset; we choose among
# those and a wider range on validation, since the scale of the penultimate features depends on the network
KD_BANDWIDTHS = (0.1, 0.26, 0.5, 1.0, 1.2, 2.0, 5.0, 10.0, 20.0)
LID_KS = (10, 20, 30, 40)  # Ma et al.'s k for MNIST/CIFAR-10 was 20 of a minibatch of 100
LID_BATCHES = (100, 200, 400)


# ---------------------------------------------------------------------------------------------
# The math


def lid_mle(distances: Tensor) -> Tensor:
    """Maximum-likelihood LID (Ma et al. 2018) from each row's distances to its k nearest
    neighbours: ``-(mean_i log(r_i / r_k))^-1``, r_k the largest. Returns (N,) float64.

    Zero distances (identical activations) are floored at the smallest positive float, so a
    row is finite unless all its k distances are equal; then the estimate diverges (inf).
    """
    d = torch.as_tensor(distances).double().clamp_min(torch.finfo(torch.float64).tiny)
    mean_log = (d / d.amax(dim=1, keepdim=True)).log().mean(dim=1)  # <= 0
    return -1.0 / mean_log


def lid_estimate(points: Tensor, reference: Tensor, k: int, exclude: Tensor | None = None) -> Tensor:
    """LID of each of ``points`` (N, D) among its ``k`` nearest ``reference`` points (M, D).

    ``exclude`` (N, M) bool marks reference points that must not count as a neighbour of that
    point (the point itself). Returns (N,) float64, differentiable w.r.t. ``points``.
    """
    available = reference.shape[0] - (0 if exclude is None else int(exclude.sum(1).max()))
    if available < k:
        raise DetectorError(f"LID needs k = {k} neighbours per point; only {available} reference points are available")
    return lid_mle(_nearest(points, reference, k, exclude))


ROUNDING = 1e-6  # a matmul distance below this share of |p|^2 + |r|^2 is computed again directly


def _nearest(points: Tensor, reference: Tensor, k: int, exclude: Tensor | None) -> Tensor:
    """(N, k) distances to the k nearest reference points, ascending. Squared distances come from
    a float64 matmul, ``|p|^2 + |r|^2 - 2 p.r``, whose rounding (about 1e-16 of ``|p|^2 + |r|^2``)
    would swamp the small distances LID depends on, so every one of the k below ``ROUNDING`` of
    that is computed again as ``|p - r|^2`` directly (as exact as ``torch.cdist`` without the
    matmul, at a fraction of its cost). Differentiable w.r.t. ``points``."""
    p, r = points.double(), reference.double()
    pn, rn = p.pow(2).sum(1), r.pow(2).sum(1)
    d2 = (pn[:, None] + rn[None, :] - 2 * p @ r.T).clamp_min(0.0)
    if exclude is not None:
        d2 = d2.masked_fill(exclude, float("inf"))
    d2, idx = d2.topk(k, dim=1, largest=False)
    rows, cols = (d2 < ROUNDING * (pn[:, None] + rn[idx])).nonzero(as_tuple=True)
    if len(rows):
        d2 = d2.index_put((rows, cols), (p[rows] - r[idx[rows, cols]]).pow(2).sum(1)).sort(dim=1).values
    return d2.clamp_min(torch.finfo(torch.float64).tiny).sqrt()  # no infinite gradient at 0


def class_gaussians(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the precision of the covariance they share (Lee et al. 2018).

    Returns ``means`` (C, D), one row per class present in ``labels`` (in sorted order), and
    ``precision`` (D, D), the pseudo-inverse of the tied covariance of the class-centred features.
    """
    from sklearn.covariance import EmpiricalCovariance

    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    return means, EmpiricalCovariance(assume_centered=True).fit(centred).precision_


def mahalanobis_scores(points: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """Lee et al.'s confidence: max over classes of the negative squared Mahalanobis distance.
    Returns (N,); in-distribution points score close to 0, outliers far below."""
    diff = points[:, None, :] - means[None, :, :]  # (N, C, D)
    dist = torch.einsum("ncd,ncd->nc", diff @ precision, diff)  # (N, C) squared distances
    return -dist.amin(dim=1)


def kd_log_density(points: Tensor, reference: Tensor, bandwidth: float) -> Tensor:
    """Log density at ``points`` (N, D) of a Gaussian kernel density with ``bandwidth`` on
    ``reference`` (M, D), as sklearn's ``KernelDensity(kernel="gaussian").score_samples``.
    Returns (N,) float64."""
    points, reference = torch.as_tensor(points).double(), torch.as_tensor(reference).double()
    d2 = torch.cdist(points, reference, compute_mode="donot_use_mm_for_euclid_dist").pow(2)  # (N, M)
    dim = reference.shape[1]
    norm = np.log(len(reference)) + 0.5 * dim * np.log(2 * np.pi * bandwidth**2)
    return torch.logsumexp(-d2 / (2 * bandwidth**2), dim=1) - norm


def mc_dropout_uncertainty(features: Tensor, head: nn.Module, *, p: float, samples: int, seed: int) -> Tensor:
    """Feinman et al.'s Bayesian uncertainty of ``head`` (features -> logits) under dropout
    with rate ``p`` on its input ``features`` (N, D): over ``samples`` dropout masks,
    ``mean_t ||y_t||^2 - ||mean_t y_t||^2`` with y_t the softmax output. Returns (N,) >= 0.

    The ``samples`` masks (inverted dropout, kept units scaled by 1/(1-p)) come from ``seed``
    and are shared by every point, so that a point's value does not depend on its batch (and
    an adaptive attack sees fixed masks).
    """
    if not 0.0 <= p < 1.0:
        raise DetectorError(f"dropout rate must be in [0, 1), got {p}")
    gen = torch.Generator().manual_seed(seed)
    masks = (torch.rand(samples, features.shape[1], generator=gen) >= p).to(features) / (1.0 - p)  # (T, D)
    probs = F.softmax(head(features[None] * masks[:, None]), dim=-1).double()  # (T, N, classes)
    # the same quantity as a variance, shifted by the first sample: exactly 0 when all T agree
    dev = probs - probs[0]
    return (dev.pow(2).mean(0) - dev.mean(0).pow(2)).sum(-1).clamp_min(0)


# ---------------------------------------------------------------------------------------------
# Detectors


@register_detector("kd-bu")
class KDBU(Detector):
    """Feinman et al. 2017: features (log kernel density, Bayesian uncertainty) -> logistic regression.

    The density is that of the penultimate features (the input of ``model.fc``) of the reference
    images of the *predicted* class; the bandwidth is chosen on validation among
    ``KD_BANDWIDTHS`` unless given. Our networks have no dropout, so the uncertainty is adapted:
    dropout with rate ``dropout`` on the penultimate features only, before ``model.fc``, with
    ``samples`` fixed masks drawn from ``seed``.
    """

    family = "baseline"

    def __init__(self, model: Network, ref_x: Tensor, ref_y: Tensor, *, bandwidth: float | None = None,
                 dropout: float = 0.5, samples: int = 20, seed: int = 0, batch_size: int = 250):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        if (bandwidth is not None and bandwidth <= 0) or not 0 <= dropout < 1 or samples < 1:
            raise DetectorError(f"kd-bu needs bandwidth > 0, dropout in [0, 1) and samples >= 1; "
                                f"got {bandwidth}, {dropout} and {samples}")
        self.params.update(bandwidth=None if bandwidth is None else float(bandwidth), dropout=float(dropout),
                           samples=int(samples), seed=int(seed), reference=int(len(ref_x)))
        self.feature_names = ["kd", "bu"]
        missing = sorted(set(range(model.fc.out_features)) - set(ref_y.tolist()))
        if missing:
            raise DetectorError(f"kd-bu needs reference images of every class; ref_y has none of class(es) {missing}")
        feats = torch.cat([acts["fc.input"] for acts in _layer_batches(model, ref_x, batch_size)]).double()
        self._ref = [feats[ref_y == c] for c in range(model.fc.out_features)]  # per class (M_c, D)
        self._search = bandwidth is None
        if self._search:
            self.params["bandwidth"] = 1.0  # until select() chooses

    def torch_features(self, x: Tensor) -> Tensor:
        acts = activations(self.model, x)
        pen, pred = acts["fc.input"], acts["logits"].argmax(1)
        p = self.params
        kd = _per_class(pred, lambda c, rows: kd_log_density(pen[rows], self._ref[c], p["bandwidth"]))
        bu = mc_dropout_uncertainty(pen, self.model.fc, p=p["dropout"], samples=p["samples"], seed=p["seed"])
        return torch.stack([kd, bu], dim=1)

    def select(self, fit: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor]):
        if not self._search:
            return None
        # the penultimate features do not depend on the bandwidth: compute them once
        parts = {side: [self._penultimate(x) for x in images] for side, images in (("fit", fit), ("val", val))}
        aucs, feats = {}, {}
        for h in KD_BANDWIDTHS:
            self.params["bandwidth"] = h
            feats[h] = {side: tuple(self._kd_bu(*part) for part in parts[side]) for side in parts}
            aucs[h] = validation_auc(self._new_classifier(), feats[h]["fit"], feats[h]["val"])
        best = max(aucs, key=aucs.get)
        self.params.update(bandwidth=float(best), bandwidth_auc={str(h): a for h, a in aucs.items()})
        return feats[best]["fit"], feats[best]["val"]

    def _penultimate(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pens, preds, bus = [], [], []
        p = self.params
        with _evaluating(self.model), torch.no_grad():
            for xb in _batches(x, self.batch_size, self.model):
                acts = activations(self.model, xb)
                pens.append(acts["fc.input"])
                preds.append(acts["logits"].argmax(1))
                bus.append(mc_dropout_uncertainty(acts["fc.input"], self.model.fc, p=p["dropout"],
                                                  samples=p["samples"], seed=p["seed"]))
        return torch.cat(pens), torch.cat(preds), torch.cat(bus)

    def _kd_bu(self, pen: Tensor, pred: Tensor, bu: Tensor) -> np.ndarray:
        kd = _per_class(pred, lambda c, rows: kd_log_density(pen[rows], self._ref[c], self.params["bandwidth"]))
        return torch.stack([kd, bu], dim=1).cpu().numpy()


def _per_class(pred: Tensor, value) -> Tensor:
    """(N,) float64: ``value(c, rows)`` for the rows predicted as each class c, in row order
    (differentiable: assembled by concatenation and a permutation, not by in-place writes)."""
    rows = [(pred == c).nonzero().flatten() for c in pred.unique().tolist()]
    values = torch.cat([value(int(pred[r[0]]), r) for r in rows])
    order = torch.cat(rows).argsort()
    return values[order]


@register_detector("lid")
class LID(Detector):
    """Ma et al. 2018: the LID of each layer's activations -> logistic regression over layers.

    Layers: every ``GatedConv`` output after ReLU (flattened) and the logits. Neighbours come
    from a minibatch of ``ref_batch`` reference images drawn with ``seed`` and computed once; a
    reference image identical to the scored image is never its own neighbour. ``k`` and
    ``ref_batch`` are chosen on validation (``LID_KS`` x ``LID_BATCHES``) unless given.
    """

    family = "baseline"

    def __init__(self, model: Network, ref_x: Tensor, ref_y: Tensor, *, k: int | None = None,
                 ref_batch: int | None = None, seed: int = 0, batch_size: int = 250):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        batches = [b for b in ((ref_batch,) if ref_batch else LID_BATCHES) if b <= len(ref_x)] or [len(ref_x)]
        ks = (k,) if k else LID_KS
        self._grid = [(kk, b) for b in batches for kk in ks if 0 < kk < b]
        if not self._grid:
            raise DetectorError(f"lid needs 0 < k < reference minibatch size; got k = {k}, "
                                f"ref_batch = {ref_batch}, {len(ref_x)} reference images")
        self.params.update(k=int(self._grid[0][0]), ref_batch=int(self._grid[0][1]), seed=int(seed))
        largest = max(b for _, b in self._grid)
        # a fixed random order: the first b reference images are a random minibatch of size b
        idx = torch.from_numpy(np.random.default_rng(seed).permutation(len(ref_x))[:largest])
        self._ref_inputs = ref_x[idx].flatten(1).to(model.mean.device)  # (M, C*H*W)
        self._probe = torch.randn(self._ref_inputs.shape[1], generator=torch.Generator().manual_seed(seed),
                                  dtype=torch.float64).to(model.mean.device)  # a random direction
        self._ref_probe = self._ref_inputs.double() @ self._probe
        parts = [_flatten(acts) for acts in _layer_batches(model, ref_x[idx], batch_size)]
        self._ref = {n: torch.cat([p[n] for p in parts]) for n in parts[0]}  # name -> (M, D_l)
        self.feature_names = list(self._ref)

    def torch_features(self, x: Tensor) -> Tensor:
        k, b = self.params["k"], self.params["ref_batch"]
        flat = _flatten(activations(self.model, x))
        itself = self._itself(x)[:, :b]
        return torch.stack([lid_estimate(flat[n], self._ref[n][:b], k, itself) for n in self.feature_names], 1)

    def _itself(self, x: Tensor) -> Tensor:
        """(B, M) which reference images equal each image of ``x``."""
        xb = x.detach().flatten(1).to(self._ref_inputs)
        # candidates: equal projections on a random direction (up to rounding); then compared exactly
        probe = xb.double() @ self._probe
        rows, cols = ((probe[:, None] - self._ref_probe).abs() <= 1e-9 * (1 + self._ref_probe.abs())).nonzero(as_tuple=True)
        same = torch.zeros(len(xb), len(self._ref_inputs), dtype=torch.bool, device=xb.device)
        same[rows, cols] = (xb[rows] == self._ref_inputs[cols]).all(1)
        return same

    def select(self, fit: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor]):
        if len(self._grid) == 1:
            return None
        kmax = max(k for k, _ in self._grid)
        # per layer and minibatch size, the sorted distances to the kmax nearest reference points once
        dist = {side: [self._distances(x, kmax) for x in images] for side, images in (("fit", fit), ("val", val))}
        aucs, feats = {}, {}
        for k, b in self._grid:
            feats[(k, b)] = {side: tuple(np.stack([lid_mle(d[(n, b)][:, :k]).double().numpy() for n in self.feature_names], 1)
                                         for d in dist[side]) for side in dist}
            aucs[(k, b)] = validation_auc(self._new_classifier(), feats[(k, b)]["fit"], feats[(k, b)]["val"])
        k, b = max(aucs, key=aucs.get)
        self.params.update(k=int(k), ref_batch=int(b), grid_auc={f"k={kk},batch={bb}": a for (kk, bb), a in aucs.items()})
        return feats[(k, b)]["fit"], feats[(k, b)]["val"]

    def _distances(self, x: Tensor, kmax: int) -> dict[tuple[str, int], Tensor]:
        out: dict[tuple[str, int], list[Tensor]] = {}
        batches = sorted({b for _, b in self._grid})
        with _evaluating(self.model), torch.no_grad():
            for xb in _batches(x, self.batch_size, self.model):
                flat, itself = _flatten(activations(self.model, xb)), self._itself(xb)
                for n in self.feature_names:
                    for b in batches:
                        out.setdefault((n, b), []).append(_nearest(flat[n], self._ref[n][:b], min(kmax, b - 1),
                                                                   itself[:, :b]))
        return {key: torch.cat(parts) for key, parts in out.items()}


def _flatten(acts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every GatedConv output flattened and the logits: LID's layers."""
    return {n: a.flatten(1) for n, a in acts.items() if n != "fc.input"}


@register_detector("mahalanobis")
class Mahalanobis(Detector):
    """Simplified Lee et al. 2018: per layer, the Mahalanobis confidence under class Gaussians
    with a tied covariance estimated on the reference images only, *without* input
    pre-processing -> logistic regression over layers. ``mahalanobis-lee`` is the full recipe.

    Layers: every ``GatedConv`` output after ReLU, averaged over space, and the penultimate
    features (the input of ``model.fc``).
    """

    family = "baseline (simplified)"

    def __init__(self, model: Network, ref_x: Tensor, ref_y: Tensor, *, batch_size: int = 250):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        parts = [_pooled(acts) for acts in _layer_batches(model, ref_x, batch_size)]
        pooled = {n: torch.cat([p[n] for p in parts]).double().cpu().numpy() for n in parts[0]}
        labels = ref_y.numpy()
        self.params["reference"] = int(len(ref_x))
        self._gaussians = {n: tuple(torch.from_numpy(a) for a in class_gaussians(f, labels)) for n, f in pooled.items()}
        self.feature_names = list(pooled)

    def torch_features(self, x: Tensor) -> Tensor:
        pooled = _pooled(activations(self.model, x))
        return torch.stack([mahalanobis_scores(pooled[n].double(), *self._gaussians[n]) for n in self.feature_names], 1)


def _pooled(acts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every GatedConv output averaged over space (B, C) and ``"fc.input"`` (B, D)."""
    return {n: (a.mean(dim=(2, 3)) if a.dim() == 4 else a) for n, a in acts.items() if n != "logits"}
