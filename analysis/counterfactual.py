"""Counterfactual decisions: force a gated layer to take another action and see what follows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models import Network, forced_actions

from .paths import Path, changed_layers, decision_path


@dataclass
class Counterfactual:
    """One input's path as the model decides it and with some gates forced."""

    factual: Path
    forced: Path
    force: dict[int, int]  # gate -> the action it was made to take

    @property
    def knock_on(self) -> list[int]:
        """Gates after the first forced one, not forced themselves, whose choice changed as a result."""
        first = min(self.force)
        return [l for l in changed_layers(self.factual, self.forced) if l > first and l not in self.force]

    @property
    def macs_change(self) -> float:
        """Counted MACs of the forced path minus those of the factual one."""
        return self.forced.macs - self.factual.macs


def runner_up(path: Path, layer: int) -> int:
    """The action gate ``layer`` rated second for this input (the most likely one it did not take)."""
    order = np.argsort(-path.probs[layer], kind="stable")
    return int(order[1] if order[0] == path.actions[layer] else order[0])


def counterfactual(model: Network, x: torch.Tensor, force: dict[int, int]) -> Counterfactual:
    """The path of one input ``x`` (1, C, H, W) as decided and with gate ``l`` forced to take
    action ``force[l]``; later gates decide freely on what the forced masks let through.

    >>> cf = counterfactual(model, x, {2: runner_up(decision_path(model, x), 2)})
    >>> cf.forced.prediction, cf.knock_on, cf.macs_change
    """
    if not force:
        raise ValueError("force at least one gate: {gate: action}")
    factual = decision_path(model, x)
    with forced_actions(model, force):
        forced = decision_path(model, x)
    return Counterfactual(factual=factual, forced=forced, force=dict(force))
