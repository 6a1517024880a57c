"""The detection audit that ``gatescope analyze`` stores: every detector on every attack, oblivious
and adaptive, the known / unknown / transfer matrix, and which gated layers carry the signal.

Protocol (``protocol.SourceSplit``): only successful attacks count; the clean and attacked
versions of a source image are always on the same side of a fixed train/test split of source
images. Detectors are fitted on the training side, choose their hyperparameters on a validation
part of it (``detector_base.VALIDATION``), and are scored on the test side only. The "best
decision-feature variant" of an attack is the one with the best *validation* AUC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from models import Network

from .adaptive import adaptive_pgd
from .attacks import margin_of
from .detector_base import Detector
from .protocol import SourceSplit, detection_metrics, labelled

# how an attack relates to the decision boundary (the audit shows minimal and confident ones apart)
ATTACK_KINDS = {"fgsm": "fixed budget", "bim": "fixed budget", "pgd": "fixed budget", "deepfool": "minimal",
                "cw_l2": "minimal", "cw_l2_k10": "confident", "cw_l2_k20": "confident", "pgd_margin": "confident"}
DECISION_FAMILY = "decision features"


@dataclass(frozen=True)
class AuditInputs:
    """What the audit reads: the analysed split's images and the stored attacks."""

    x: torch.Tensor  # (N, C, H, W) every image of the analysed split, pixel space
    clean_rows: "object"  # the clean entry's table (label, pred, ...), one row per image of x
    clean_log_probs: np.ndarray  # (N, L, K) action log-probabilities of x
    attacks: dict  # name -> {"rows": source/label/success/l2/linf table, "x_adv": (n, C, H, W), "log_probs": (n, L, K)}
    attack_params: dict  # name -> the parameters the attack ran with


def audit(model: Network, data: AuditInputs, detectors: dict[str, Detector], *, seed: int = 0, n_boot: int = 1000,
          adaptive_on: str | None = "pgd", adaptive_limit: int = 1000, log: Callable[[str], None] = print,
          stored: Callable[[str, Callable[[], dict]], dict] | None = None) -> dict:
    """Fit every detector (built once, ``Detector.fresh`` per attack) on every attack and score it;
    returns the JSON-ready results (see the module docstring for the protocol).

    The work is one :func:`audit_attack` part per attack, independent of the others; ``stored(name,
    compute)`` may return a part kept from an earlier, interrupted audit instead of computing it
    (``analyze`` stores each part as it finishes, so an audit resumes where it stopped)."""
    sides = SourceSplit.of(len(data.x), seed=seed)
    test_sets = {name: test for name in data.attacks if (test := _test_side(data, name, sides)) is not None}
    score = _Scores()
    parts = {}
    for name in data.attacks:
        def compute(name=name):
            return audit_attack(model, data, detectors, name, sides=sides, test_sets=test_sets, score=score, seed=seed,
                                n_boot=n_boot, adaptive=name == adaptive_on, adaptive_limit=adaptive_limit, log=log)
        parts[name] = stored(name, compute) if stored else compute()
    return combined(parts, sides, n_images=len(data.x))


def combined(parts: dict[str, dict], sides: SourceSplit, *, n_images: int) -> dict:
    """The audit's results from its per-attack parts (:func:`audit_attack`)."""
    return {"format": 3, "split": {"train": int(len(sides.train)), "test": int(len(sides.test))},
            "n_images": int(n_images), "attacks": {n: p["summary"] for n, p in parts.items()},
            "best_decision": {n: p["best_decision"] for n, p in parts.items() if "best_decision" in p},
            "transfer": _transposed({n: p["transfer"] for n, p in parts.items() if p.get("transfer")}),
            "layers": {n: p["layers"] for n, p in parts.items() if "layers" in p},
            "adaptive": next((p["adaptive"] for p in parts.values() if p.get("adaptive")), {})}


def _transposed(rows: dict[str, dict[str, dict]]) -> dict:
    """{training attack: {detector: row}} -> {detector: {training attack: row}}."""
    out: dict = {}
    for train_name, by_detector in rows.items():
        for det_name, row in by_detector.items():
            out.setdefault(det_name, {})[train_name] = row
    return out


def _test_side(data: AuditInputs, name: str, sides: SourceSplit) -> tuple[np.ndarray, torch.Tensor] | None:
    """The attack's successful sources on the test side (indices into ``data.x``: the clean images)
    and their adversarial images, or None when there are too few to train and test detectors."""
    ok, src, tr, te = _successful(data, name, sides)
    if tr.sum() < 10 or te.sum() < 5:
        return None
    x_adv = data.attacks[name]["x_adv"]
    return src[te], torch.from_numpy(np.ascontiguousarray(x_adv[ok][te]))


def _successful(data: AuditInputs, name: str, sides: SourceSplit) -> tuple[np.ndarray, ...]:
    """The attack's success mask over its rows, the source images of the successful rows, and
    which of those fall on the training and on the test side."""
    rows = data.attacks[name]["rows"]
    ok = rows["success"].to_numpy().astype(bool)
    src = rows["source"].to_numpy()[ok]
    return (ok, src, *sides.sides(src))


def audit_attack(model: Network, data: AuditInputs, detectors: dict[str, Detector], name: str, *, sides: SourceSplit,
                 test_sets: dict, score: "_Scores", seed: int, n_boot: int, adaptive: bool, adaptive_limit: int,
                 log: Callable[[str], None]) -> dict:
    """One attack's part of the audit: its summary with every detector fitted on its training side
    and scored on its test side, the best decision variant by validation, the per-layer AUCs, the
    transfer row (these detectors scored on every attack's test side in ``test_sets``) and, when
    ``adaptive``, every detector attacked adaptively with this attack's budget."""
    adv = data.attacks[name]
    ok, src, tr, _ = _successful(data, name, sides)
    x_adv = torch.from_numpy(np.ascontiguousarray(adv["x_adv"][ok]))
    summary = _attack_summary(model, name, adv["rows"], ok, x_adv, data.attack_params[name])
    if name not in test_sets:
        log(f"attack {name}: too few successful adversarials to train and test detectors")
        return {"summary": summary}
    train_c, train_a = data.x[torch.from_numpy(src[tr])], x_adv[torch.from_numpy(tr)]
    trained: dict[str, Detector] = {}
    for det_name, proto in detectors.items():
        log(f"detector {det_name} on {name}")
        det = proto.fresh().fit(train_c, train_a, seed=seed)
        scores, labels = labelled(score.clean(det_name, det, data.x, test_sets[name][0]),
                                  score(det_name, det, name, test_sets[name][1]))
        summary["detectors"][det_name] = {
            **detection_metrics(labels, scores, n_boot=n_boot, seed=seed), "family": proto.family,
            "validation_auc": None if det.validation is None else det.validation["auc"], "params": det.params}
        trained[det_name] = det
    part = {"summary": summary, "best_decision": _best_by_validation(summary["detectors"]),
            "transfer": _transfer_row(name, trained, data.x, test_sets, score, log)}
    if data.clean_log_probs.ndim == 3 and data.clean_log_probs.shape[1]:
        n_layers = data.clean_log_probs.shape[1]
        part["layers"] = per_layer_auc(data.clean_log_probs.reshape(len(data.x), -1),
                                       adv["log_probs"][ok].reshape(int(ok.sum()), -1), src, sides, n_layers)
    if adaptive:
        part["adaptive"] = _adaptive(model, data, sides, trained, name, adaptive_limit, n_boot, seed, log)
    return part


def _attack_summary(model: Network, name: str, rows, ok: np.ndarray, x_adv: torch.Tensor, params: dict) -> dict:
    margins = np.zeros(0)
    if ok.any():
        y = torch.from_numpy(rows["label"].to_numpy()[ok])
        with torch.no_grad():
            margins = torch.cat([margin_of(model(x_adv[i:i + 500]), y[i:i + 500]) for i in range(0, len(y), 500)]).numpy()
    return {"attacked": int(len(rows)), "success_rate": float(ok.mean()) if len(rows) else 0.0,
            "kind": ATTACK_KINDS.get(name, "other"),
            "mean_l2": float(rows["l2"][ok].mean()) if ok.any() else 0.0,
            "mean_linf": float(rows["linf"][ok].mean()) if ok.any() else 0.0,
            "median_margin": float(np.median(margins)) if len(margins) else 0.0,  # best wrong minus true logit
            "params": params, "detectors": {}}


def _best_by_validation(detectors: dict[str, dict]) -> str | None:
    """The decision-feature variant with the best validation AUC (never the test AUC)."""
    candidates = {n: m["validation_auc"] for n, m in detectors.items()
                  if m["family"] == DECISION_FAMILY and m["validation_auc"] is not None}
    return max(candidates, key=candidates.get) if candidates else None


class _Scores:
    """Scores of a detector on an attack's adversarial test set, or on clean images, from features
    cached by (detector, parameters) and the set or the clean image: the transfer matrix scores
    each test set with detectors trained on every attack, detectors whose parameters agree share
    the features (the logistic regression differs), and the attacks' test sides share most of
    their clean images (an image's features do not depend on the others in its batch)."""

    def __init__(self):
        self._features: dict[tuple, np.ndarray] = {}
        self._clean: dict[tuple, dict[int, np.ndarray]] = {}

    @staticmethod
    def _params(label: str, det: Detector) -> tuple:
        return label, json.dumps(det.feature_params(), sort_keys=True, default=str)

    def __call__(self, label: str, det: Detector, attack: str, x_adv: torch.Tensor) -> np.ndarray:
        memo = (*self._params(label, det), attack)
        if memo not in self._features:
            self._features[memo] = det.features(x_adv)
        return det.score_features(self._features[memo])

    def clean(self, label: str, det: Detector, x: torch.Tensor, sources: np.ndarray) -> np.ndarray:
        """Scores of the clean images ``x[sources]``."""
        rows = self._clean.setdefault(self._params(label, det), {})
        missing = [int(s) for s in dict.fromkeys(sources.tolist()) if int(s) not in rows]
        if missing:
            rows.update(zip(missing, det.features(x[torch.tensor(missing)])))
        return det.score_features(np.stack([rows[int(s)] for s in sources]))


def _transfer_row(train_name: str, trained: dict[str, Detector], x: torch.Tensor, test_sets: dict, score: _Scores,
                  log) -> dict:
    """ROC-AUC of each detector trained on ``train_name`` on every attack's test side: one row of
    the known / unknown / transfer matrix (the diagonal is the known-attack figure, the FGSM row
    Lee et al.'s unknown-attack setting)."""
    from sklearn.metrics import roc_auc_score

    log(f"transfer: detectors trained on {train_name} on {len(test_sets)} attacks' test sides")
    row: dict = {}
    for det_name, det in trained.items():
        for test_name, (sources, adv) in test_sets.items():
            scores, labels = labelled(score.clean(det_name, det, x, sources), score(det_name, det, test_name, adv))
            row.setdefault(det_name, {})[test_name] = float(roc_auc_score(labels, scores))
    return row


def _adaptive(model, data: AuditInputs, sides, trained, attack: str, limit: int, n_boot: int, seed: int, log) -> dict:
    """Per detector trained on ``attack``, PGD with that attack's eps budget against the classifier
    and that detector together; a detector without a differentiable score is evaluated on the
    inputs crafted against ``decision-logreg`` (a transfer attack, said so)."""
    params = data.attack_params[attack]
    rows = data.clean_rows
    labels_all = rows["label"].to_numpy()
    correct = np.flatnonzero(labels_all == rows["pred"].to_numpy())
    targets = correct[np.isin(correct, sides.test)][:limit]  # the held-out side only
    xt, yt = data.x[torch.from_numpy(targets)], torch.from_numpy(labels_all[targets])
    crafted: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    out: dict = {}
    names = list(trained)
    differentiable = {n: trained[n].differentiable for n in names}
    for name in sorted(names, key=lambda n: not differentiable[n]):  # crafted ones first, transfers after
        det = trained[name]
        source = name if differentiable[name] else "decision-logreg"
        if source not in crafted:
            if source not in names:
                continue
            log(f"adaptive PGD against {source} on {len(targets)} test-side inputs")
            torch.manual_seed(seed)
            crafted[source] = adaptive_pgd(model, trained[source].torch_logit, xt, yt, eps=params["eps"],
                                           step=params["step_size"], steps=params["steps"])
        x_adv, success = crafted[source]
        s = success.numpy().astype(bool)
        entry = {"attack": attack, "attacked": int(len(targets)), "success_rate": float(s.mean()),
                 "crafted_against": source, "params": {**params, "loss": "CE until misclassified, then -detector logit"}}
        if s.sum() >= 5:
            clean_scores, adv_scores = det.score(xt), det.score(x_adv[torch.from_numpy(s)])
            scores, labels = labelled(clean_scores, adv_scores)
            m = detection_metrics(labels, scores, n_boot=n_boot, seed=seed)
            entry.update(auc=m["auc"], auc_ci=m["auc_ci"], tpr_at_5fpr=m["tpr_at_5fpr"], n_clean=m["n_clean"],
                         n_adversarial=m["n_adversarial"],
                         evaded_at_5fpr=float((adv_scores < np.quantile(clean_scores, 0.95)).mean()))
        out[name] = entry
    return out


def per_layer_auc(clean_f: np.ndarray, adv_f: np.ndarray, src: np.ndarray, sides: SourceSplit, n_layers: int) -> list[float]:
    """ROC-AUC of a logistic regression on one gated layer's log-probabilities at a time."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = clean_f.shape[1] // n_layers
    tr, te = sides.sides(src)
    aucs = []
    for l in range(n_layers):
        cols = slice(l * k, (l + 1) * k)
        x_tr, y_tr = labelled(clean_f[src[tr], cols], adv_f[tr, cols])
        x_te, y_te = labelled(clean_f[src[te], cols], adv_f[te, cols])
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_tr, y_tr)
        aucs.append(float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1])))
    return aucs


def audit_table(results: dict) -> "pd.DataFrame":
    """One row per attack x detector: oblivious ROC-AUC with its 95% interval and TPR at 5% FPR
    (test side), the adaptive figures where the detector was attacked adaptively, the validation
    AUC that chose the best decision variant, and the test-side sample counts."""
    import pandas as pd

    rows = []
    for attack, s in results["attacks"].items():
        best = results.get("best_decision", {}).get(attack)
        for det, m in s["detectors"].items():
            a = results.get("adaptive", {}).get(det, {}) if attack == next(iter(results.get("adaptive", {}).values()), {}).get("attack") else {}
            rows.append({
                "attack": attack, "kind": s.get("kind", ""), "success": s["success_rate"], "detector": det,
                "family": m.get("family", ""), "best decision variant": det == best,
                "ROC-AUC": m["auc"], "AUC 95% CI": f"[{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]",
                "TPR@5%FPR": m["tpr_at_5fpr"], "validation AUC": m.get("validation_auc"),
                "adaptive ROC-AUC": a.get("auc"), "adaptive evaded@5%FPR": a.get("evaded_at_5fpr"),
                "adaptive success": a.get("success_rate"),
                "test clean / adversarial": f"{m['n_clean']} / {m['n_adversarial']}",
            })
    table = pd.DataFrame(rows)
    numeric = ["validation AUC", "adaptive ROC-AUC", "adaptive evaded@5%FPR", "adaptive success"]
    table[numeric] = table[numeric].astype(float)  # None -> NaN: one numeric column each, not objects
    return table


def upgraded(results: dict) -> dict:
    """Results stored by an older gatescope (format 2: one adaptive attack and one transfer matrix,
    both of ``decision-logreg``) in today's layout, so their table still shows; nothing is invented
    (the missing figures stay missing)."""
    if results.get("format", 2) >= 3:
        return results
    out = {**results, "format": 2, "best_decision": {}, "n_images": None}
    out["attacks"] = {a: {"kind": ATTACK_KINDS.get(a, "other"), "median_margin": None, **s} for a, s in results["attacks"].items()}
    old = results.get("adaptive")
    out["adaptive"] = {"decision-logreg": {**old, "attack": "pgd", "crafted_against": "decision-logreg"}} if old else {}
    out["transfer"] = {"decision-logreg": results["transfer"]} if results.get("transfer") else {}
    return out
