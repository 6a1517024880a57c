"""Adversarial-input detectors by name, one calling convention (see ``detector_base``):

- decision features (``decision``): the paper's ``decision-logreg`` and its variants;
- baselines as their papers define them: ``kd-bu``, ``lid`` (``baselines``), ``mahalanobis-lee``
  (``mahalanobis``), and the simplified ``mahalanobis`` (no pre-processing, reference subset);
- no training on attacks (``confidence``): ``msp`` and ``margin``.

>>> det = create_detector("lid", model, ref_x, ref_y)
>>> det.fit(x_clean, x_adv).score(x_test)  # (N,) probabilities in [0, 1]
"""

from . import baselines, confidence, decision, mahalanobis  # noqa: F401  (each registers its detectors)
from .baselines import class_gaussians, kd_log_density, lid_estimate, lid_mle, mahalanobis_scores, mc_dropout_uncertainty
from .detector_base import Detector, DetectorError, create_detector, detector_class, list_detectors, register_detector

__all__ = [
    "Detector", "DetectorError", "class_gaussians", "create_detector", "detector_class", "kd_log_density",
    "lid_estimate", "lid_mle", "list_detectors", "mahalanobis_scores", "mc_dropout_uncertainty", "register_detector",
]
