"""Adversarial inputs: attacks by name (``attacks``, and ``compute_attack``, which targets the
counted cost instead of the prediction), detectors by name (``detectors``), the detection
protocol (``protocol``), adaptive attacks (``adaptive``) and the audit (``audit``)."""

from . import compute_attack  # noqa: F401  (registers the "compute" attack)
