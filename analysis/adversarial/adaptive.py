"""Adaptive attacks (Carlini & Wagner 2017; Tramer et al. 2020): attack the whole pipeline the
defender runs, classifier and detector together.

``adaptive_pgd`` takes any differentiable detector score (``Detector.torch_logit``). Decisions
are argmax choices with zero gradient, so the attack differentiates through the decision units
with the straight-through relaxation used in training (``models.relaxed_decisions``); every
other detector is differentiated as it is (KD-BU with its fixed dropout masks; Lee's
pre-processing as a constant step).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from models import Network, relaxed_decisions


def adaptive_pgd(
    model: Network, logit: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
    eps: float, step: float, steps: int, tau: float = 1.0, batch_size: int = 250,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L-inf PGD (random start) against classifier and detector: each step, an input the model
    still classifies correctly ascends its cross-entropy, a misclassified one descends the
    detector's ``logit`` (B,) (higher = flagged). Keeps per input the misclassified iterate with
    the lowest detector logit (or the last iterate if none was misclassified).

    Returns the adversarial inputs and whether each is misclassified (plain argmax decisions,
    as deployed).
    """
    outs, wins = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = (xb + torch.empty_like(xb).uniform_(-eps, eps)).clamp(0, 1)
        best = adv.clone()
        best_logit = torch.full((len(xb),), float("inf"))
        found = torch.zeros(len(xb), dtype=torch.bool)
        for _ in range(steps + 1):  # the last pass only evaluates the final iterate
            adv.requires_grad_(True)
            with relaxed_decisions(model, tau):
                logits = model(adv)
                score = logit(adv)
            with torch.no_grad():
                wrong = logits.argmax(1) != yb
                better = wrong & (score.detach().float().cpu() < best_logit)
                best[better], best_logit[better] = adv.detach()[better], score.detach().float().cpu()[better]
                found |= wrong
            if _ == steps:
                break
            loss = torch.where(wrong, -score, F.cross_entropy(logits, yb, reduction="none").to(score.dtype)).sum()
            grad, = torch.autograd.grad(loss, adv)
            adv = adv.detach() + step * grad.sign()
            adv = torch.min(torch.max(adv, xb - eps), xb + eps).clamp(0, 1)
        best[~found] = adv.detach()[~found]
        with torch.no_grad():
            wins.append(model(best).argmax(1) != yb)
        outs.append(best)
    return torch.cat(outs), torch.cat(wins)
