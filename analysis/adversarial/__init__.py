"""Adversarial inputs: attacks by name, detectors by name, the detection protocol and the audit."""
