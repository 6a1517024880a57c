"""The detection protocol: splits by source image, metrics with bootstrap intervals, transfer.

Only successful attacks count. The clean and the adversarial version of one source image always
fall on the same side of a fixed train/test split of the source images, so no detector is ever
scored on (a version of) an image it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

FPR_LEVEL = 0.05  # TPR is reported at this false-positive rate
CURVE_POINTS = 200  # operating points kept of each stored ROC curve (evenly spaced, ends kept), plus
SCORE_GRID = np.linspace(0.0, 1.0, 101)  # the exact operating point at each of these score thresholds


@dataclass(frozen=True)
class SourceSplit:
    """Which source images (indices into the evaluated split) train and which test detectors."""

    train: np.ndarray
    test: np.ndarray

    @classmethod
    def of(cls, n: int, *, seed: int = 0, test_fraction: float = 0.5) -> "SourceSplit":
        order = np.random.default_rng(seed).permutation(n)
        cut = int(round(n * (1 - test_fraction)))
        return cls(train=np.sort(order[:cut]), test=np.sort(order[cut:]))

    def sides(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks over ``sources`` (source indices) for the train and the test side."""
        return np.isin(sources, self.train), np.isin(sources, self.test)


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, level: float = FPR_LEVEL) -> float:
    """True-positive rate at the largest threshold whose false-positive rate is <= ``level``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= level].max())


def detection_metrics(labels: np.ndarray, scores: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """ROC-AUC, TPR at 5% FPR and accuracy at score 0.5, each with a bootstrap 95% interval.

    ``labels``: 1 adversarial, 0 clean; ``scores``: higher means adversarial (probabilities).
    Also returns the ROC curve (``fpr``, ``tpr``, ``thresholds`` lists) for plotting, thinned to
    about ``CURVE_POINTS`` points but exact at every threshold of ``SCORE_GRID`` (what the page's
    threshold slider offers), so :func:`confusion_at` counts exactly there.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("detector scores contain NaN or infinity")
    if len(np.unique(labels)) != 2:
        raise ValueError("detection metrics need both clean and adversarial samples")

    auc, tpr, acc = _weighted_points(labels, scores, np.ones((1, len(labels))))[0]
    rng = np.random.default_rng(seed)
    boots = []
    while sum(map(len, boots)) < n_boot:  # resamples with replacement, as index draws, in chunks
        counts = np.stack([np.bincount(rng.integers(0, len(labels), len(labels)), minlength=len(labels))
                           for _ in range(min(BOOT_CHUNK, n_boot - sum(map(len, boots))))])
        n_adv = counts[:, labels == 1].sum(1)
        both = (n_adv > 0) & (n_adv < len(labels))  # a resample needs both classes
        boots.append(_weighted_points(labels, scores, counts[both]))
    lo, hi = np.percentile(np.concatenate(boots), [2.5, 97.5], axis=0)
    fpr, tpr_curve, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    at_grid = (thresholds[None, :] >= SCORE_GRID[:, None]).sum(1) - 1  # thresholds descend: last one >= t
    keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, min(len(fpr), CURVE_POINTS)).round().astype(int),
                           at_grid[at_grid >= 0]])
    fpr, tpr_curve, thresholds = fpr[keep], tpr_curve[keep], thresholds[keep]
    return {
        "auc": float(auc), "auc_ci": [float(lo[0]), float(hi[0])],
        "tpr_at_5fpr": float(tpr), "tpr_at_5fpr_ci": [float(lo[1]), float(hi[1])],
        "accuracy": float(acc), "accuracy_ci": [float(lo[2]), float(hi[2])],
        "n_clean": int((labels == 0).sum()), "n_adversarial": int((labels == 1).sum()),
        "fpr": fpr.round(5).tolist(), "tpr": tpr_curve.round(5).tolist(),
        "thresholds": np.minimum(thresholds, 1e9).round(6).tolist(),  # the first is +inf: nothing flagged
    }


BOOT_CHUNK = 100  # bootstrap resamples evaluated together


def _weighted_points(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(R, 3) ROC-AUC, TPR at ``FPR_LEVEL`` and accuracy at score 0.5 of R resamples, each given as
    how often it drew every row (``counts`` (R, N)): exactly ``roc_auc_score``, ``tpr_at_fpr`` and
    the accuracy of the resampled rows (ties count one half in the AUC, as there), in O(N) numpy
    work per resample instead of sklearn's sort and checks per call."""
    order = np.argsort(scores, kind="stable")
    s, y, w = scores[order], labels[order], counts[:, order].astype(np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]  # groups of equal scores, ascending
    adv = np.add.reduceat(w * (y == 1), starts, axis=1)  # (R, G) weight per score group
    clean = np.add.reduceat(w * (y == 0), starts, axis=1)
    n_adv, n_clean = adv.sum(1), clean.sum(1)
    below = np.cumsum(clean, axis=1) - clean  # clean weight strictly below each group
    auc = (adv * (below + 0.5 * clean)).sum(1) / (n_adv * n_clean)
    # flagging every score >= a group's: false and true positive rates; plus nothing flagged (0, 0)
    fpr = (n_clean[:, None] - below) / n_clean[:, None]
    tpr = (n_adv[:, None] - (np.cumsum(adv, axis=1) - adv)) / n_adv[:, None]
    tpr_at = np.maximum(np.where(fpr <= FPR_LEVEL, tpr, 0.0).max(1), 0.0)
    correct = ((s >= 0.5) == (y == 1)).astype(np.float64)
    accuracy = (w * correct).sum(1) / w.sum(1)
    return np.stack([auc, tpr_at, accuracy], 1)


def labelled(clean: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stack clean (label 0) and adversarial (label 1) rows."""
    return np.concatenate([clean, adversarial]), np.r_[np.zeros(len(clean), int), np.ones(len(adversarial), int)]


def confusion_at(metrics: dict, threshold: float) -> dict[str, int]:
    """Counts of a detector flagging every score >= ``threshold``, read off its stored ROC curve."""
    thresholds = np.asarray(metrics["thresholds"])
    i = int(np.flatnonzero(thresholds >= threshold).max())  # thresholds fall along the curve
    n_clean, n_adv = metrics["n_clean"], metrics["n_adversarial"]
    tp, fp = int(round(metrics["tpr"][i] * n_adv)), int(round(metrics["fpr"][i] * n_clean))
    return {"adversarial flagged": tp, "adversarial missed": n_adv - tp, "clean flagged": fp, "clean passed": n_clean - fp}
