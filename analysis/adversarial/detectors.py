"""Adversarial-input detectors by name: the decision-feature detectors of the AAAI 2020 paper
("Dynamic Network Pruning with Interpretable Layerwise Channel Selection") and three baselines
(KD+BU, LID, Mahalanobis).

Every detector has one calling convention: construct it with the model, a clean *reference*
set (training images and labels; the baselines take class statistics, densities and
neighbours from it) and keyword options; ``fit`` it on clean and adversarial images; ``score``
new images (higher = more likely adversarial).

>>> det = create_detector("lid", model, ref_x, ref_y, k=20)
>>> det.fit(x_clean, x_adv).score(x_test)  # (N,) probabilities in [0, 1]

The math of the baselines lives in small pure functions (``lid_estimate``, ``class_gaussians``,
``mahalanobis_scores``, ``kd_log_density``, ``mc_dropout_uncertainty``) so that it can be
checked on data where the answer is known.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import logsumexp
from torch import Tensor, nn

from models import GatedConv, Network, gated_convs
from models.registry import Registry

BATCH_SIZE = 250  # images per forward pass


class DetectorError(Exception):
    """A detector that cannot be built or used; the message says what was expected."""


# ---------------------------------------------------------------------------------------------
# The math, on plain arrays


def lid_mle(distances: np.ndarray) -> np.ndarray:
    """Maximum-likelihood LID (Ma et al. 2018) from each row's distances to its k nearest
    neighbours: ``-(mean_i log(r_i / r_k))^-1``, r_k the largest. Returns (N,) float64.

    Zero distances (identical activations) are floored at the smallest positive float, so a
    row is finite unless all its k distances are equal; then the estimate diverges (inf).
    """
    d = np.sort(np.maximum(np.asarray(distances, np.float64), np.finfo(np.float64).tiny), axis=1)
    mean_log = np.log(d / d[:, -1:]).mean(axis=1)  # <= 0
    with np.errstate(divide="ignore"):
        return -1.0 / mean_log


def lid_estimate(points: Tensor, reference: Tensor, k: int, exclude: Tensor | None = None) -> np.ndarray:
    """LID of each of ``points`` (N, D) among its ``k`` nearest ``reference`` points (M, D).

    ``exclude`` (N, M) bool marks reference points that must not count as a neighbour of that
    point (the point itself). Returns (N,) float64.
    """
    # exact pairwise distances: the matmul shortcut loses the small ones LID depends on
    d = torch.cdist(points.double(), reference.double(), compute_mode="donot_use_mm_for_euclid_dist")
    if exclude is not None:
        d = d.masked_fill(exclude, float("inf"))
    available = reference.shape[0] - (0 if exclude is None else int(exclude.sum(1).max()))
    if available < k:
        raise DetectorError(f"LID needs k = {k} neighbours per point; only {available} reference points are available")
    return lid_mle(d.topk(k, dim=1, largest=False).values.cpu().numpy())


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


def mahalanobis_scores(points: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Lee et al.'s confidence: max over classes of the negative squared Mahalanobis distance.
    Returns (N,); in-distribution points score close to 0, outliers far below."""
    diff = points[:, None, :] - means[None, :, :]  # (N, C, D)
    dist = np.einsum("ncd,ncd->nc", diff @ precision, diff)  # (N, C) squared distances
    return -dist.min(axis=1)


def kd_log_density(points: np.ndarray, reference: np.ndarray, bandwidth: float) -> np.ndarray:
    """Log density at ``points`` (N, D) of a Gaussian kernel density with ``bandwidth`` on
    ``reference`` (M, D), as sklearn's ``KernelDensity(kernel="gaussian").score_samples``.
    Returns (N,) float64."""
    from scipy.spatial.distance import cdist

    d2 = cdist(np.asarray(points, np.float64), np.asarray(reference, np.float64), "sqeuclidean")  # (N, M)
    dim = reference.shape[1]
    norm = np.log(len(reference)) + 0.5 * dim * np.log(2 * np.pi * bandwidth**2)
    return logsumexp(-d2 / (2 * bandwidth**2), axis=1) - norm


def mc_dropout_uncertainty(features: Tensor, head: nn.Module, *, p: float, samples: int, seed: int) -> np.ndarray:
    """Feinman et al.'s Bayesian uncertainty of ``head`` (features -> logits) under dropout
    with rate ``p`` on its input ``features`` (N, D): over ``samples`` dropout masks,
    ``mean_t ||y_t||^2 - ||mean_t y_t||^2`` with y_t the softmax output. Returns (N,) >= 0.

    The ``samples`` masks (inverted dropout, kept units scaled by 1/(1-p)) come from ``seed``
    and are shared by every point, so that a point's value does not depend on its batch.
    """
    if not 0.0 <= p < 1.0:
        raise DetectorError(f"dropout rate must be in [0, 1), got {p}")
    gen = torch.Generator().manual_seed(seed)
    masks = (torch.rand(samples, features.shape[1], generator=gen) >= p).to(features) / (1.0 - p)  # (T, D)
    probs = F.softmax(head(features[None] * masks[:, None]), dim=-1).double()  # (T, N, classes)
    # the same quantity as a variance, shifted by the first sample: exactly 0 when all T agree
    dev = probs - probs[0]
    return (dev.pow(2).mean(0) - dev.mean(0).pow(2)).sum(-1).clamp_min(0).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Detectors


class Detector:
    """Base class: ``features`` (N, F) per input -> a classifier fitted clean (0) vs adversarial (1).

    Subclasses set ``feature_names`` (one per feature column) and compute ``features``; the
    default classifier is a standardised logistic regression.
    """

    name: str = ""

    def __init__(self, model: Network, ref_x: Tensor, ref_y: Tensor, *, batch_size: int = BATCH_SIZE):
        _check_images(ref_x, "ref_x")
        if ref_y.shape != (len(ref_x),):
            raise DetectorError(f"ref_y must have shape ({len(ref_x)},) to match ref_x, got {tuple(ref_y.shape)}")
        classes = model.fc.out_features
        low, high = int(ref_y.min()), int(ref_y.max())
        if low < 0 or high >= classes:
            raise DetectorError(f"ref_y must hold class indices in [0, {classes}), found {low}..{high}")
        self.model = model
        self.batch_size = batch_size
        self.params: dict = {"batch_size": int(batch_size)}  # JSON-serialisable options actually used
        self.feature_names: list[str] = []
        self._classifier = None

    def features(self, x: Tensor) -> np.ndarray:
        """(N, F) the features the classifier uses, columns named by ``feature_names``."""
        raise NotImplementedError

    def _new_classifier(self):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))

    def fit(self, x_clean: Tensor, x_adv: Tensor) -> "Detector":
        """Fit the classifier on clean (label 0) and adversarial (label 1) images; returns self."""
        _check_images(x_clean, "x_clean")
        _check_images(x_adv, "x_adv")
        feats = np.concatenate([self.features(x_clean), self.features(x_adv)])
        labels = np.r_[np.zeros(len(x_clean), int), np.ones(len(x_adv), int)]
        self._classifier = self._new_classifier().fit(feats, labels)
        return self

    def score(self, x: Tensor) -> np.ndarray:
        """(N,) probability in [0, 1] that each image is adversarial."""
        if self._classifier is None:
            raise DetectorError(f"detector {self.name!r} is not fitted; call fit(x_clean, x_adv) before score")
        _check_images(x, "x")
        return self._classifier.predict_proba(self.features(x))[:, 1]


_DETECTORS: Registry[type[Detector]] = Registry("detector", DetectorError)


def register_detector(name: str):
    """Class decorator registering a :class:`Detector` subclass under ``name``."""

    def wrap(cls: type[Detector]) -> type[Detector]:
        cls.name = name
        return _DETECTORS.register(name)(cls)

    return wrap


def list_detectors(pattern: str = "*") -> list[str]:
    """Registered detector names matching a glob ``pattern``, sorted."""
    return _DETECTORS.names(pattern)


def create_detector(name: str, model: Network, ref_x: Tensor, ref_y: Tensor, **params) -> Detector:
    """The detector registered as ``name``, built on ``model`` and the clean reference set.

    >>> det = create_detector("kd-bu", model, ref_x, ref_y, bandwidth=1.2)
    """
    cls = _DETECTORS.get(name)
    known = [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise DetectorError(f"detector {name!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return cls(model, ref_x, ref_y, **params)


class _DecisionDetector(Detector):
    """Concatenated per-layer action log-probabilities (L*K features) of the gated layers; the
    reference set is not used."""

    def __init__(self, model: Network, ref_x: Tensor, ref_y: Tensor, *, batch_size: int = BATCH_SIZE):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        names = {m: n for n, m in model.named_modules()}
        gates = gated_convs(model)
        if not gates:
            raise DetectorError(f"detector {self.name!r} reads the gates' decisions; this model has no gated layer")
        self.feature_names = [f"{names[g]}:{a}" for g in gates for a in range(g.bank.weight.shape[0])]

    def features(self, x: Tensor) -> np.ndarray:
        out = []
        with _evaluating(self.model), torch.no_grad():
            for xb in _batches(x, self.batch_size, self.model):
                _, decisions = self.model.decide(xb)
                out.append(torch.cat([d.log_probs for d in decisions], dim=1).cpu().numpy())  # (B, L*K)
        return np.concatenate(out).astype(np.float64)


@register_detector("decision-logreg")
class DecisionLogReg(_DecisionDetector):
    """The paper's detector: standardised decision features -> logistic regression."""


@register_detector("decision-gbm")
class DecisionGBM(_DecisionDetector):
    """Decision features -> gradient-boosted trees (sklearn's HistGradientBoostingClassifier)."""

    def _new_classifier(self):
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(random_state=0)


@register_detector("kd-bu")
class KDBU(Detector):
    """Feinman et al. 2017: features (log kernel density, Bayesian uncertainty) -> logistic regression.

    The density is that of the penultimate features (the input of ``model.fc``) of the reference
    images of the *predicted* class. Our networks have no dropout, so the uncertainty is
    adapted: dropout with rate ``dropout`` is applied to the penultimate features only, before
    ``model.fc``, with ``samples`` fixed masks drawn from ``seed``.
    """

    def __init__(self, model: Network, ref_x: Tensor, ref_y: Tensor, *, bandwidth: float = 1.20,
                 dropout: float = 0.5, samples: int = 20, seed: int = 0, batch_size: int = BATCH_SIZE):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        if bandwidth <= 0 or not 0 <= dropout < 1 or samples < 1:
            raise DetectorError(f"kd-bu needs bandwidth > 0, dropout in [0, 1) and samples >= 1; "
                                f"got {bandwidth}, {dropout} and {samples}")
        self.params.update(bandwidth=float(bandwidth), dropout=float(dropout), samples=int(samples), seed=int(seed))
        self.feature_names = ["kd", "bu"]
        missing = sorted(set(range(model.fc.out_features)) - set(ref_y.tolist()))
        if missing:
            raise DetectorError(f"kd-bu needs reference images of every class; ref_y has none of class(es) {missing}")
        feats = torch.cat([acts["fc.input"] for acts in _layer_batches(model, ref_x, batch_size)]).cpu().numpy()
        labels = ref_y.numpy()
        self._ref = [feats[labels == c] for c in range(model.fc.out_features)]  # per class (M_c, D)

    def features(self, x: Tensor) -> np.ndarray:
        p = self.params
        out = []
        for acts in _layer_batches(self.model, x, self.batch_size):
            pen, pred = acts["fc.input"], acts["logits"].argmax(1).cpu().numpy()  # (B, D), (B,)
            kd = np.empty(len(pred))
            for c in np.unique(pred):
                kd[pred == c] = kd_log_density(pen[pred == c].cpu().numpy(), self._ref[c], p["bandwidth"])
            with torch.no_grad():
                bu = mc_dropout_uncertainty(pen, self.model.fc, p=p["dropout"], samples=p["samples"], seed=p["seed"])
            out.append(np.stack([kd, bu], axis=1))
        return np.concatenate(out)


@register_detector("lid")
class LID(Detector):
    """Ma et al. 2018: the LID of each layer's activations -> logistic regression over layers.

    Layers: every ``GatedConv`` output after ReLU (flattened) and the logits. Neighbours come
    from one minibatch of ``ref_batch`` reference images drawn with ``seed`` and computed once;
    a reference image identical to the scored image is never its own neighbour.
    """

    def __init__(self, model: Network, ref_x: Tensor, ref_y: Tensor, *, k: int = 20, ref_batch: int = 100,
                 seed: int = 0, batch_size: int = BATCH_SIZE):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        if not 0 < k < min(ref_batch, len(ref_x)):
            raise DetectorError(f"lid needs 0 < k < reference minibatch size; got k = {k}, "
                                f"ref_batch = {ref_batch}, {len(ref_x)} reference images")
        self.params.update(k=int(k), ref_batch=int(ref_batch), seed=int(seed))
        idx = np.sort(np.random.default_rng(seed).choice(len(ref_x), size=min(ref_batch, len(ref_x)), replace=False))
        self._ref_inputs = ref_x[idx].flatten(1).to(model.mean.device)  # (M, C*H*W)
        self._ref = _flat_layers(model, ref_x[idx], batch_size)  # name -> (M, D_l)
        self.feature_names = list(self._ref)

    def features(self, x: Tensor) -> np.ndarray:
        k = self.params["k"]
        out, start = [], 0
        for acts in _layer_batches(self.model, x, self.batch_size):
            xb = x[start:start + len(acts["logits"])].flatten(1).to(self._ref_inputs)
            start += len(xb)
            itself = torch.cdist(xb, self._ref_inputs, compute_mode="donot_use_mm_for_euclid_dist") == 0  # (B, M)
            flat = _flatten(acts)
            out.append(np.stack([lid_estimate(flat[n], self._ref[n], k, itself) for n in self.feature_names], 1))
        return np.concatenate(out)


@register_detector("mahalanobis")
class Mahalanobis(Detector):
    """Lee et al. 2018 without input preprocessing: per layer, the Mahalanobis confidence under
    class Gaussians with a tied covariance -> logistic regression over layers.

    Layers: every ``GatedConv`` output after ReLU, averaged over space, and the penultimate
    features (the input of ``model.fc``).
    """

    def __init__(self, model: Network, ref_x: Tensor, ref_y: Tensor, *, batch_size: int = BATCH_SIZE):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        pooled = _pooled_layers(model, ref_x, batch_size)
        labels = ref_y.numpy()
        self._gaussians = {n: class_gaussians(f, labels) for n, f in pooled.items()}
        self.feature_names = list(pooled)

    def features(self, x: Tensor) -> np.ndarray:
        pooled = _pooled_layers(self.model, x, self.batch_size)
        return np.stack([mahalanobis_scores(pooled[n], *self._gaussians[n]) for n in self.feature_names], 1)


# ---------------------------------------------------------------------------------------------
# Activations


def _check_images(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or len(x) == 0:
        found = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise DetectorError(f"{what} must be a non-empty (N, C, H, W) image tensor, got {found}")


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (argmax gates, running BN statistics) for the block; the old mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _batches(x: Tensor, batch_size: int, model: Network) -> Iterator[Tensor]:
    device = model.mean.device
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size].to(device)


def _layer_batches(model: Network, x: Tensor, batch_size: int) -> Iterator[dict[str, Tensor]]:
    """Per batch of ``x``: every GatedConv's output after ReLU (B, C, H, W) under its module
    name, ``"fc.input"`` (B, D) and ``"logits"`` (B, classes), read by forward hooks."""
    store: dict[str, Tensor] = {}
    handles = [m.register_forward_hook(_keeper(store, n)) for n, m in model.named_modules() if isinstance(m, GatedConv)]
    handles.append(model.fc.register_forward_pre_hook(lambda _m, inputs: store.__setitem__("fc.input", inputs[0])))
    try:
        with _evaluating(model), torch.no_grad():
            for xb in _batches(x, batch_size, model):
                logits = model(xb)
                yield {**store, "logits": logits}
    finally:
        for h in handles:
            h.remove()


def _keeper(store: dict[str, Tensor], name: str):
    def hook(_module, _inputs, output):
        store[name] = F.relu(output)  # the GatedConv output is pre-ReLU

    return hook


def _flatten(acts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every GatedConv output flattened and the logits: LID's layers."""
    return {n: a.flatten(1) for n, a in acts.items() if n != "fc.input"}


def _flat_layers(model: Network, x: Tensor, batch_size: int) -> dict[str, Tensor]:
    parts = [_flatten(acts) for acts in _layer_batches(model, x, batch_size)]
    return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}


def _pooled_layers(model: Network, x: Tensor, batch_size: int) -> dict[str, np.ndarray]:
    """Every GatedConv output averaged over space (N, C) and ``"fc.input"`` (N, D): Mahalanobis's layers."""
    parts = []
    for acts in _layer_batches(model, x, batch_size):
        parts.append({n: (a.mean(dim=(2, 3)) if a.dim() == 4 else a) for n, a in acts.items() if n != "logits"})
    return {n: torch.cat([p[n] for p in parts]).double().cpu().numpy() for n in parts[0]}
