"""Compute as an attack surface: inputs perturbed to make a dynamic network expensive.

A gated network's counted MACs depend on its input, so an attacker can raise them, as ILFO
(Haque et al. 2020, layer-skipping networks) and DeepSloth (Hong et al. 2021, early-exit
networks) do. The ``compute``
attack is L-inf PGD on a differentiable surrogate of the counted MACs (see
:func:`expected_active_channels`); :func:`compute_attack_report` runs it at several budgets and
reports the exact counted MACs before and after, as JSON.

>>> attack = create_attack("compute", model, eps=8 / 255)
>>> x_adv = attack(x, y).x_adv      # y: the model's clean predictions, see ComputeAttack
>>> report = compute_attack_report(model, x, y, input_shape=(1, 28, 28), eps_values=[2 / 255, 8 / 255])
>>> report["results"]["8/255"]["after"]["mean_ratio"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch

from models import CostModel, Decision, Network, active_channels, cost_model, gated_convs, relaxed_decisions

from ..evaluation import check_finite
from .attacks import Attack, _Config, register_attack

HIGH_COST = 0.75  # "expensive": counted MACs above this share of the ungated network's
HIST_BINS = 40  # bins of the MACs-ratio histograms over [0, 1]


@dataclass(frozen=True)
class ComputeConfig(_Config):
    positive: ClassVar[tuple[str, ...]] = ("step_size", "tau")

    eps: float = 8 / 255  # L-inf budget in pixels
    step_size: float = 1 / 255  # L-inf length of one signed-gradient step (the report uses eps / 4)
    steps: int = 20  # gradient steps (each followed by a projection onto the ball and [0, 1])
    tau: float = 1.0  # temperature of the action distributions softmax(logits / tau)


def expected_active_channels(model: Network, decisions: list[Decision], *, tau: float = 1.0) -> list[torch.Tensor]:
    """Per gated layer, the expected number (B,) of active channels when each input's action is
    drawn from softmax(logits / tau): sum_k p_k * (non-zero entries of mask row k).

    With one-hot action distributions this is :func:`models.active_channels` of the argmax
    decisions; it is differentiable in the logits (not in the masks' zero patterns).
    """
    banks = [g.bank.weight for g in gated_convs(model)]
    if len(banks) != len(decisions):
        raise ValueError(f"the model has {len(banks)} gated layers but {len(decisions)} decisions were given")
    counts = []
    for bank, d in zip(banks, decisions):
        nonzero = (bank.detach() != 0).sum(dim=1).to(d.logits.dtype)  # (K,) active channels of each action
        counts.append(torch.softmax(d.logits / tau, dim=1) @ nonzero)  # (B,)
    return counts


@register_attack("compute")
class ComputeAttack(Attack):
    """L-inf PGD (from x, signed gradients, projected onto the eps ball and [0, 1] every step)
    that maximises a differentiable surrogate of the counted dynamic MACs.

    The surrogate is :meth:`models.CostModel.dynamic_macs` evaluated at the *expected* active
    channels of every gated layer (:func:`expected_active_channels`), differentiated through
    the relaxed decisions (:func:`models.relaxed_decisions`). A layer's exact cost is linear in
    the active channels it consumes and in those it produces; where two gated layers meet the
    surrogate uses the product of their expectations, not the expectation of the product.
    It only steers the search: every iterate is scored by the exact counted MACs of its argmax
    decisions, and each input gets the iterate that scored highest (x itself unless one beat
    it), so on a deterministic (eval-mode) model the counted MACs never go down. In train mode
    the decisions are Gumbel samples and so are these scores.

    The goal is cost, not misclassification: y is used only for ``AttackResult.success``,
    which (as for every attack) says that the prediction on x_adv differs from y. Pass the
    model's clean predictions as y to read it as "prediction changed".
    A network without gated layers has an input-independent cost: x is returned unchanged.
    """

    Config = ComputeConfig

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not gated_convs(self.model):
            return x
        cfg = self.config
        costs = cost_model(self.model, tuple(x.shape[1:]))
        best, best_macs = x.clone(), torch.full((len(x),), -1.0, dtype=torch.float64, device=x.device)
        adv = x.clone()
        with relaxed_decisions(self.model, cfg.tau):
            for step in range(cfg.steps + 1):
                adv.requires_grad_(True)
                _, decisions = self.model.decide(adv)
                with torch.no_grad():
                    # the relaxed forward is the argmax forward: these are the exact counts
                    macs = costs.dynamic_macs(active_channels(decisions))  # (B,)
                    better = macs > best_macs
                    best[better], best_macs[better] = adv[better], macs[better]
                if step == cfg.steps:
                    break
                surrogate = costs.dynamic_macs(expected_active_channels(self.model, decisions, tau=cfg.tau))
                grad, = torch.autograd.grad(surrogate.sum(), adv)
                adv = adv.detach() + cfg.step_size * grad.sign()
                adv = torch.min(torch.max(adv, x - cfg.eps), x + cfg.eps).clamp(0.0, 1.0)
        return best


def compute_attack_report(
    model: Network, x: torch.Tensor, y: torch.Tensor, *, input_shape: Sequence[int], eps_values: Sequence[float],
    steps: int = ComputeConfig.steps, step_size: float | None = None, tau: float = ComputeConfig.tau,
    batch_size: int = 250, log: Callable[[str], None] | None = None,
) -> dict:
    """Run the ``compute`` attack on ``x`` (N, C, H, W) in [0, 1] with true labels ``y`` (N,) at
    every L-inf budget of ``eps_values`` and count the MACs before and after.

    All MACs are exact counts of the argmax decisions with the model in eval mode (restored
    afterwards), as ratios over the ungated network's MACs. ``step_size`` defaults to eps / 4
    (1/255 at eps = 0); ``batch_size`` images are attacked and counted at a time; ``log``, if
    given, gets one line per budget. Returns plain JSON (no NaN)::

        {"ungated_macs": int, "high_cost": 0.75,
         "bin_edges": [41 floats over [0, 1]],
         "results": {"8/255": {            # label of eps: "k/255" when eps is a multiple of 1/255
             "eps": float, "params": {...},  # the attack's parameters
             "n": N,
             "before": {"mean_ratio", "max_ratio", "share_high", "accuracy", "hist": [40 ints]},
             "after": {same keys},
             "share_increased": float,    # inputs whose counted MACs went up
             "prediction_changed": float,  # inputs whose prediction differs from the clean one
             "mean_linf": float}, ...}}  # over all N, 0 for inputs the attack left as they were

    ``share_high`` is the share of inputs above ``high_cost`` of the ungated MACs; ratios above
    1 (every channel on, plus the decision units) are counted in the last bin of ``hist``.

    >>> report = compute_attack_report(model, x, y, input_shape=(1, 28, 28), eps_values=[8 / 255])
    """
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"x has images of shape {tuple(x.shape[1:])}; input_shape is {tuple(input_shape)}")
    if len(x) == 0 or y.shape != (len(x),):
        raise ValueError(f"need N >= 1 images and N labels; got x of shape {tuple(x.shape)}, "
                         f"y of shape {tuple(y.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not gated_convs(model):
        raise ValueError("compute_attack_report needs a gated network; this one has no gated layers")
    labels = [eps_label(eps) for eps in eps_values]
    if len(set(labels)) != len(labels):
        raise ValueError(f"eps_values repeat a budget: {', '.join(labels)}")
    check_finite("the images", x)
    say = log or (lambda message: None)
    was_training = model.training
    model.eval()
    device = model.mean.device
    try:
        costs = cost_model(model, tuple(input_shape))
        clean_macs, clean_pred = _count(model, costs, x, batch_size)
        before = _summary(clean_macs / costs.ungated_macs, clean_pred, y)
        results = {}
        for label, eps in zip(labels, eps_values):
            step = step_size if step_size is not None else (eps / 4 if eps > 0 else ComputeConfig.step_size)
            attack = ComputeAttack(model, eps=eps, steps=steps, tau=tau, step_size=step)
            # the clean predictions as labels: AttackResult.success is then "prediction changed"
            x_adv = torch.cat([attack(xb.to(device), pb.to(device)).x_adv.to(x.device)
                               for xb, pb in zip(x.split(batch_size), clean_pred.split(batch_size))])
            macs, pred = _count(model, costs, x_adv, batch_size)
            after = _summary(macs / costs.ungated_macs, pred, y)
            results[label] = {
                "eps": float(eps), "params": attack.params, "n": len(x), "before": before, "after": after,
                "share_increased": float((macs > clean_macs).mean()),
                "prediction_changed": float((pred != clean_pred).float().mean()),
                "mean_linf": float((x_adv - x).flatten(1).abs().amax(dim=1).mean()),
            }
            say(f"compute attack eps {label}: mean MACs ratio {before['mean_ratio']:.3f} -> {after['mean_ratio']:.3f}, "
                f"above {HIGH_COST}: {before['share_high']:.1%} -> {after['share_high']:.1%}")
    finally:
        model.train(was_training)
    return {"ungated_macs": costs.ungated_macs, "high_cost": HIGH_COST,
            "bin_edges": np.linspace(0.0, 1.0, HIST_BINS + 1).tolist(), "results": results}


def eps_label(eps: float) -> str:
    """The report's key for ``eps``: ``"8/255"`` for a non-zero multiple of 1/255 (to 1e-9), ``"0"``
    for 0, else the float as Python prints it (``"0.3"``)."""
    k = round(eps * 255)
    if abs(eps * 255 - k) >= 1e-9:
        return repr(float(eps))
    return f"{k}/255" if k else "0"


@torch.no_grad()
def _count(model: Network, costs: CostModel, x: torch.Tensor, batch_size: int) -> tuple[np.ndarray, torch.Tensor]:
    """Counted MACs (N,) of the argmax decisions and the predictions (N,) on ``x``."""
    device = model.mean.device
    macs, preds = [], []
    for xb in x.split(batch_size):
        logits, decisions = model.decide(xb.to(device))
        macs.append(costs.dynamic_macs(active_channels(decisions)).cpu().numpy())
        preds.append(logits.argmax(dim=1).cpu())
    return np.concatenate(macs), torch.cat(preds)


def _summary(ratio: np.ndarray, pred: torch.Tensor, y: torch.Tensor) -> dict:
    hist, _ = np.histogram(np.clip(ratio, 0.0, 1.0), bins=HIST_BINS, range=(0.0, 1.0))
    return {"mean_ratio": float(ratio.mean()), "max_ratio": float(ratio.max()),
            "share_high": float((ratio > HIGH_COST).mean()),
            "accuracy": float((pred == y.cpu()).float().mean()), "hist": hist.tolist()}


def compute_table(report: dict) -> "pd.DataFrame":
    """One row per budget of a :func:`compute_attack_report`: counted MACs ratios before and after."""
    import pandas as pd

    return pd.DataFrame([{
        "eps": label, "inputs": r["n"], "mean ratio before": r["before"]["mean_ratio"],
        "mean ratio after": r["after"]["mean_ratio"], "max ratio before": r["before"]["max_ratio"],
        "max ratio after": r["after"]["max_ratio"], f"share > {report['high_cost']} before": r["before"]["share_high"],
        f"share > {report['high_cost']} after": r["after"]["share_high"], "costlier": r["share_increased"],
        "prediction changed": r["prediction_changed"]} for label, r in report["results"].items()])
