"""What every adversarial-input detector shares: the calling convention, the registry, the
choice of hyperparameters on a validation part of the training side, a differentiable score
for adaptive attacks, and the hooks that read a network's activations.

Every detector: construct it with the model, a clean *reference* set (training images and
labels) and keyword options; ``fit`` it on clean and adversarial images (the training side of
the audit's split; hyperparameters are chosen on a validation part of it, never on the test
side); ``score`` new images (higher = more likely adversarial). ``torch_logit`` is the same
score as a differentiable function of the images, for attacks that target the detector.

>>> det = create_detector("lid", model, ref_x, ref_y)
>>> det.fit(x_clean, x_adv).score(x_test)  # (N,) probabilities in [0, 1]
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from typing import ClassVar, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import GatedConv, Network
from models.registry import Registry

BATCH_SIZE = 250  # images per forward pass
VALIDATION = 0.2  # share of the training side that chooses hyperparameters and reports validation AUC


class DetectorError(Exception):
    """A detector that cannot be built or used; the message says what was expected."""


class Detector:
    """Base class: per-input ``features`` (N, F) -> a classifier fitted clean (0) vs adversarial (1).

    Subclasses set ``feature_names`` (one per column) and implement ``torch_features`` for one
    batch, differentiably; they may override ``select`` to choose hyperparameters on the
    validation part. The classifier is a standardised logistic regression unless
    ``_new_classifier`` says otherwise (then ``differentiable`` is False).
    """

    name: ClassVar[str] = ""
    differentiable: ClassVar[bool] = True  # torch_logit exists: the detector can be attacked adaptively
    family: ClassVar[str] = ""  # "decision features", "baseline" or "baseline (simplified)"

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
        self.validation: dict | None = None  # {"auc", "n_fit", "n_val"} once fitted
        self._classifier = None

    def fresh(self) -> "Detector":
        """An unfitted copy that shares the reference statistics (nothing is recomputed), so one
        detector built once can be fitted on each attack separately."""
        new = copy.copy(self)
        new.params, new.validation, new._classifier = copy.deepcopy(self.params), None, None
        return new

    # -- features ---------------------------------------------------------------------------

    def torch_features(self, x: Tensor) -> Tensor:
        """(B, F) features of one batch ``x`` on the model's device, differentiable w.r.t. ``x``
        (decision features through the relaxed decisions when the caller enables them)."""
        raise NotImplementedError

    def features(self, x: Tensor) -> np.ndarray:
        """(N, F) float64 features, columns named by ``feature_names`` (eval mode, no gradients)."""
        out = []
        with _evaluating(self.model), torch.no_grad():
            for xb in _batches(x, self.batch_size, self.model):
                out.append(self.torch_features(xb).double().cpu().numpy())
        return np.concatenate(out)

    # -- fitting ----------------------------------------------------------------------------

    def select(self, fit: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor]) -> Chosen | None:
        """Choose hyperparameters on ``val`` (clean, adversarial) after fitting on ``fit``;
        record them in ``params``. May return the features it computed at the chosen ones,
        ``((fit clean, fit adversarial), (val clean, val adversarial))``, which ``fit`` then
        reuses instead of computing them again. The default has none to choose."""
        return None

    def _new_classifier(self):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))

    def fit(self, x_clean: Tensor, x_adv: Tensor, *, seed: int = 0) -> "Detector":
        """Choose hyperparameters on a validation part (``VALIDATION``) of the given images, then
        fit the classifier on all of them: clean (label 0), adversarial (1). Equal-length inputs
        are taken as pairs (row i of both from one source image) and split together. Returns self."""
        _check_images(x_clean, "x_clean")
        _check_images(x_adv, "x_adv")
        fit_c, val_c = _split(len(x_clean), seed)
        fit_a, val_a = (fit_c, val_c) if len(x_adv) == len(x_clean) else _split(len(x_adv), seed)
        fit, val = (x_clean[fit_c], x_adv[fit_a]), (x_clean[val_c], x_adv[val_a])
        chosen = self.select(fit, val) if len(val_c) and len(val_a) else None
        if chosen is None:
            feats_c, feats_a = self.features(x_clean), self.features(x_adv)
        else:
            (fc, fa), (vc, va) = chosen
            feats_c, feats_a = _rows_in_order((fit_c, fc), (val_c, vc)), _rows_in_order((fit_a, fa), (val_a, va))
        if len(val_c) and len(val_a):
            self.validation = {"auc": validation_auc(self._new_classifier(), (feats_c[fit_c], feats_a[fit_a]),
                                                     (feats_c[val_c], feats_a[val_a])),
                               "n_fit": int(len(fit_c) + len(fit_a)), "n_val": int(len(val_c) + len(val_a))}
        feats = np.concatenate([feats_c, feats_a])
        labels = np.r_[np.zeros(len(x_clean), int), np.ones(len(x_adv), int)]
        self._classifier = self._new_classifier().fit(feats, labels)
        return self

    # -- scoring ----------------------------------------------------------------------------

    def score(self, x: Tensor) -> np.ndarray:
        """(N,) probability in [0, 1] that each image is adversarial."""
        _check_images(x, "x")
        return self.score_features(self.features(x))

    def feature_params(self) -> dict:
        """The parameters the features depend on (not the validation AUCs that chose them)."""
        return {k: v for k, v in self.params.items() if not k.endswith("_auc")}

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """(N,) the score of precomputed ``features`` (N, F) (what ``score`` does after ``features``)."""
        self._check_fitted()
        return self._classifier.predict_proba(features)[:, 1]

    def torch_logit(self, x: Tensor) -> Tensor:
        """(B,) the classifier's logit (the score before the sigmoid) for one batch, differentiable
        w.r.t. ``x``: what an adaptive attack pushes down."""
        self._check_fitted()
        if not self.differentiable:
            raise DetectorError(f"detector {self.name!r} has no differentiable score (its classifier is not linear)")
        scaler, lr = self._classifier[0], self._classifier[-1]
        f = self.torch_features(x)
        mean, scale = (torch.as_tensor(a, dtype=f.dtype, device=f.device) for a in (scaler.mean_, scaler.scale_))
        coef = torch.as_tensor(lr.coef_[0], dtype=f.dtype, device=f.device)
        return ((f - mean) / scale) @ coef + float(lr.intercept_[0])

    def _check_fitted(self) -> None:
        if self._classifier is None:
            raise DetectorError(f"detector {self.name!r} is not fitted; call fit(x_clean, x_adv) before score")


def validation_auc(classifier, fit: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]) -> float:
    """ROC-AUC on ``val`` (clean, adversarial features) of ``classifier`` fitted on ``fit``."""
    from sklearn.metrics import roc_auc_score

    x = np.concatenate(fit)
    y = np.r_[np.zeros(len(fit[0]), int), np.ones(len(fit[1]), int)]
    if len(np.unique(y)) < 2 or not np.isfinite(x).all():
        return 0.5
    clf = classifier.fit(x, y)
    xv = np.concatenate(val)
    yv = np.r_[np.zeros(len(val[0]), int), np.ones(len(val[1]), int)]
    return float(roc_auc_score(yv, clf.predict_proba(xv)[:, 1]))


Chosen = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # what select may return


def _rows_in_order(*parts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Rows given as (indices, features) pairs, put back at their indices."""
    out = np.empty((sum(len(i) for i, _ in parts), parts[0][1].shape[1]))
    for idx, feats in parts:
        out[idx] = feats
    return out


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fit and the validation part of n rows (fixed by ``seed``)."""
    order = np.random.default_rng(seed).permutation(n)
    cut = n - int(round(n * VALIDATION)) if n >= 10 else n  # too few rows: no validation part
    return np.sort(order[:cut]), np.sort(order[cut:])


# ---------------------------------------------------------------------------------------------
# Registry

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


def detector_class(name: str) -> type[Detector]:
    """The class registered as ``name`` (its ``family`` and ``differentiable`` say what it is)."""
    return _DETECTORS.get(name)


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


def activations(model: Network, x: Tensor) -> dict[str, Tensor]:
    """One forward pass of the batch ``x`` (gradients as the caller has them): every GatedConv's
    output after ReLU (B, C, H, W) under its module name, ``"fc.input"`` (B, D) and ``"logits"``."""
    store: dict[str, Tensor] = {}
    handles = [m.register_forward_hook(_keeper(store, n)) for n, m in model.named_modules() if isinstance(m, GatedConv)]
    handles.append(model.fc.register_forward_pre_hook(lambda _m, inputs: store.__setitem__("fc.input", inputs[0])))
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return {**store, "logits": logits}


def _layer_batches(model: Network, x: Tensor, batch_size: int) -> Iterator[dict[str, Tensor]]:
    """:func:`activations` per batch of ``x``, in eval mode and without gradients."""
    with _evaluating(model), torch.no_grad():
        for xb in _batches(x, batch_size, model):
            yield activations(model, xb)


def _keeper(store: dict[str, Tensor], name: str):
    def hook(_module, _inputs, output):
        store[name] = F.relu(output)  # the GatedConv output is pre-ReLU

    return hook
