"""Detectors on decision features: the paper's logistic regression on the action log-probabilities
(the reference row), and the variants the evidence led to, each reported whether it wins or not.

- ``decision-logreg``: standardised log-probabilities of every gated layer (L*K) -> logistic
  regression, as in "Dynamic Network Pruning with Interpretable Layerwise Channel Selection".
- ``decision-gbm``: the same features -> gradient-boosted trees (not differentiable).
- ``decision-class``: class-conditional decision statistics: per gate, how far the input's
  log-probabilities lie from its *predicted* class's training distribution and how surprising
  its action distribution is for that class; overall, the distance to the predicted class and
  to the closest other class (2L + 2 features).
- ``decision-class+lp``: both of the above together.
- ``decision+margin``: the log-probabilities and the logit margin.
- ``decision-class+margin``: the class-conditional statistics and the margin.

Class statistics come from the reference images the network classifies correctly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models import Network, gated_convs

from .confidence import logit_margin
from .detector_base import Detector, DetectorError, _batches, _evaluating, register_detector

VAR_FLOOR = 1e-3  # floor of a class's per-action variance (an action a class never varies on)


class _DecisionDetector(Detector):
    """Base of the decision-feature detectors: which feature groups a variant uses."""

    family = "decision features"
    groups: tuple[str, ...] = ("lp",)  # "lp" log-probabilities, "class" class statistics, "margin"

    def __init__(self, model: Network, ref_x: Tensor, ref_y: Tensor, *, batch_size: int = 250):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        names = {m: n for n, m in model.named_modules()}
        gates = gated_convs(model)
        if not gates:
            raise DetectorError(f"detector {self.name!r} reads the gates' decisions; this model has no gated layer")
        layer_names = [names[g] for g in gates]
        self.feature_names = []
        if "lp" in self.groups:
            self.feature_names += [f"{n}:{a}" for n, g in zip(layer_names, gates) for a in range(g.bank.weight.shape[0])]
        if "class" in self.groups:
            self.feature_names += [f"{n}:distance" for n in layer_names] + [f"{n}:surprise" for n in layer_names]
            self.feature_names += ["distance (predicted class)", "distance (closest other class)"]
            self._stats = _class_statistics(model, ref_x, ref_y, batch_size)
            self.params["reference_correct"] = int(self._stats["n"])
        if "margin" in self.groups:
            self.feature_names.append("margin")

    def torch_features(self, x: Tensor) -> Tensor:
        logits, decisions = self.model.decide(x)
        lp = torch.stack([d.log_probs for d in decisions], dim=1)  # (B, L, K)
        parts = []
        if "lp" in self.groups:
            parts.append(lp.flatten(1))
        if "class" in self.groups:
            parts.append(class_statistics(lp, logits.argmax(1), self._stats))
        if "margin" in self.groups:
            parts.append(logit_margin(logits)[:, None])
        return torch.cat([p.double() for p in parts], dim=1)


def _class_statistics(model: Network, ref_x: Tensor, ref_y: Tensor, batch_size: int) -> dict[str, Tensor]:
    """Per class c and gate l, from the correctly classified reference images of class c: the mean
    and variance of the log-probabilities (C, L, K) and the log-frequency of each action (C, L, K,
    add-one smoothed)."""
    lps, preds = [], []
    with _evaluating(model), torch.no_grad():
        for xb in _batches(ref_x, batch_size, model):
            logits, decisions = model.decide(xb)
            lps.append(torch.stack([d.log_probs for d in decisions], dim=1).double())
            preds.append(logits.argmax(1))
    lp, pred = torch.cat(lps), torch.cat(preds).cpu()
    ok = pred == ref_y
    classes = model.fc.out_features
    missing = sorted(set(range(classes)) - set(ref_y[ok].tolist()))
    if missing:
        raise DetectorError(f"class-conditional decision statistics need correctly classified reference images of "
                            f"every class; none of class(es) {missing}")
    lp, y = lp[ok], ref_y[ok]
    k = lp.shape[2]
    mean = torch.stack([lp[y == c].mean(0) for c in range(classes)])  # (C, L, K)
    var = torch.stack([lp[y == c].var(0, unbiased=False) for c in range(classes)]).clamp_min(VAR_FLOOR)
    actions = torch.nn.functional.one_hot(lp.argmax(2), k).double()  # (N, L, K)
    counts = torch.stack([actions[y == c].sum(0) for c in range(classes)]) + 1.0
    log_freq = (counts / counts.sum(2, keepdim=True)).log()
    return {"mean": mean, "var": var, "log_freq": log_freq, "n": torch.tensor(len(y))}


def class_statistics(lp: Tensor, pred: Tensor, stats: dict[str, Tensor]) -> Tensor:
    """(B, 2L + 2) class-conditional decision statistics of log-probabilities ``lp`` (B, L, K)
    whose predicted classes are ``pred`` (B,): per gate the mean standardised squared distance
    to the predicted class's mean, per gate the expected surprise ``-sum_k p_k log f_ck`` of the
    action under that class's action frequencies, then the summed distance to the predicted
    class and to the closest other class. Differentiable w.r.t. ``lp``."""
    lp = lp.double()
    mean, var = stats["mean"].to(lp.device), stats["var"].to(lp.device)  # (C, L, K)
    d = ((lp[:, None] - mean[None]).pow(2) / var[None]).mean(3)  # (B, C, L) per class and gate
    rows = torch.arange(len(lp), device=lp.device)
    own = d[rows, pred]  # (B, L)
    surprise = -(lp.exp() * stats["log_freq"].to(lp.device)[pred]).sum(2)  # (B, L)
    total = d.sum(2)  # (B, C)
    other = total.scatter(1, pred[:, None], float("inf")).amin(1)
    return torch.cat([own, surprise, total[rows, pred][:, None], other[:, None]], dim=1)


@register_detector("decision-logreg")
class DecisionLogReg(_DecisionDetector):
    """The paper's detector: standardised decision features -> logistic regression."""


@register_detector("decision-gbm")
class DecisionGBM(_DecisionDetector):
    """Decision features -> gradient-boosted trees (sklearn's HistGradientBoostingClassifier)."""

    differentiable = False

    def _new_classifier(self):
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(random_state=0)


@register_detector("decision-class")
class DecisionClass(_DecisionDetector):
    """Class-conditional decision statistics (2L + 2 features) -> logistic regression."""

    groups = ("class",)


@register_detector("decision-class+lp")
class DecisionClassLogProbs(_DecisionDetector):
    """Log-probabilities and class-conditional decision statistics -> logistic regression."""

    groups = ("lp", "class")


@register_detector("decision+margin")
class DecisionMargin(_DecisionDetector):
    """Log-probabilities and the logit margin -> logistic regression."""

    groups = ("lp", "margin")


@register_detector("decision-class+margin")
class DecisionClassMargin(_DecisionDetector):
    """Class-conditional decision statistics and the logit margin -> logistic regression."""

    groups = ("class", "margin")
