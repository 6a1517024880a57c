"""An adaptive attack (Carlini & Wagner 2017): PGD that also fools the decision-feature detector.

The detector reads the action log-probabilities of every gated layer; the argmax decisions have
zero gradient, so the attack differentiates through the decision units with the
straight-through relaxation used in training (``models.relaxed_decisions``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from models import Decision, Network, relaxed_decisions


def torch_logistic(scaler, classifier) -> Callable[[list[Decision]], torch.Tensor]:
    """A differentiable copy of a fitted StandardScaler + LogisticRegression on decision
    features: maps decisions to the detector's logit (B,), higher meaning adversarial."""
    mean = torch.as_tensor(scaler.mean_, dtype=torch.float32)
    scale = torch.as_tensor(scaler.scale_, dtype=torch.float32)
    coef = torch.as_tensor(classifier.coef_[0], dtype=torch.float32)
    bias = float(classifier.intercept_[0])

    def logit(decisions: list[Decision]) -> torch.Tensor:
        features = torch.cat([d.log_probs for d in decisions], dim=1)  # (B, L*K)
        return ((features - mean) / scale) @ coef + bias

    return logit


def adaptive_pgd(
    model: Network, detector: Callable[[list[Decision]], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
    eps: float, step: float, steps: int, weight: float = 1.0, tau: float = 1.0, batch_size: int = 250,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L-inf PGD (random start) maximising cross-entropy minus ``weight`` x the detector's logit.

    Returns the adversarial inputs and whether each is misclassified (evaluated with the plain
    argmax decisions, as deployed).
    """
    outs, wins = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = (xb + torch.empty_like(xb).uniform_(-eps, eps)).clamp(0, 1)
        with relaxed_decisions(model, tau):
            for _ in range(steps):
                adv.requires_grad_(True)
                logits, decisions = model.decide(adv)
                loss = F.cross_entropy(logits, yb, reduction="sum") - weight * detector(decisions).sum()
                grad, = torch.autograd.grad(loss, adv)
                adv = adv.detach() + step * grad.sign()
                adv = torch.min(torch.max(adv, xb - eps), xb + eps).clamp(0, 1)
        with torch.no_grad():
            wins.append(model(adv).argmax(1) != yb)
        outs.append(adv.detach())
    return torch.cat(outs), torch.cat(wins)
