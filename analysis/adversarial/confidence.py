"""The trivial baselines (Hendrycks and Gimpel 2017): how confident the classifier is, with no
training on attacks at all.

- ``msp``: one minus the maximum softmax probability;
- ``margin``: the logit margin (top-1 minus top-2 logit), negated.

Attacks that stop just across the decision boundary (DeepFool, CW-L2 with kappa 0) leave a tiny
margin, so these rows show how much of a detector's success is that artefact. ``fit`` sees the
adversarial images only to report a validation AUC: the threshold comes from clean images
alone (score 0.5 flags the 5% least confident clean training-side images).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from torch import Tensor

from .detector_base import Detector, _split, register_detector

CLEAN_FPR = 0.05  # share of clean training-side images that score >= 0.5


def logit_margin(logits: Tensor) -> Tensor:
    """(B,) top-1 minus top-2 logit (>= 0)."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


class _Confidence(Detector):
    family = "baseline (no training on attacks)"

    def _suspicion(self, logits: Tensor) -> Tensor:
        """(B,) higher = less confident."""
        raise NotImplementedError

    def torch_features(self, x: Tensor) -> Tensor:
        return self._suspicion(self.model(x)).double()[:, None]

    def fit(self, x_clean: Tensor, x_adv: Tensor, *, seed: int = 0) -> "_Confidence":
        """The threshold and scale from ``x_clean`` only; ``x_adv`` only for the validation AUC."""
        from sklearn.metrics import roc_auc_score

        s = self.features(x_clean)[:, 0]
        self._threshold = float(np.quantile(s, 1 - CLEAN_FPR))
        self._scale = float(s.std()) or 1.0
        self.params.update(threshold=self._threshold, scale=self._scale)
        _, val_c = _split(len(x_clean), seed)
        _, val_a = _split(len(x_adv), seed)
        if len(val_c) and len(val_a):
            v = np.r_[s[val_c], self.features(x_adv[torch.from_numpy(val_a)])[:, 0]]
            self.validation = {"auc": float(roc_auc_score(np.r_[np.zeros(len(val_c)), np.ones(len(val_a))], v)),
                               "n_fit": 0, "n_val": int(len(val_c) + len(val_a))}
        self._classifier = "threshold"
        return self

    def feature_params(self) -> dict:
        return {k: v for k, v in self.params.items() if k not in ("threshold", "scale")}

    def score_features(self, features: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return expit((features[:, 0] - self._threshold) / self._scale)

    def torch_logit(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return (self.torch_features(x)[:, 0] - self._threshold) / self._scale


@register_detector("msp")
class MaxSoftmax(_Confidence):
    """Hendrycks and Gimpel 2017: one minus the maximum softmax probability."""

    def __init__(self, model, ref_x, ref_y, *, batch_size: int = 250):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        self.feature_names = ["1 - max softmax"]

    def _suspicion(self, logits: Tensor) -> Tensor:
        return 1.0 - F.softmax(logits, dim=1).amax(1)


@register_detector("margin")
class LogitMargin(_Confidence):
    """The logit margin, negated: top-2 minus top-1 logit."""

    def __init__(self, model, ref_x, ref_y, *, batch_size: int = 250):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        self.feature_names = ["-(top-1 - top-2 logit)"]

    def _suspicion(self, logits: Tensor) -> Tensor:
        return -logit_margin(logits)
