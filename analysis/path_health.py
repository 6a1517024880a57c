"""Path health: how well a dynamic network uses its K actions per gate, measured the way
mixture-of-experts routing is (router entropy, load balance, expert-to-expert transitions).

All quantities are in **bits** (log base 2), from N inputs, L gates and K actions:

- decision entropy H(p_l(x)) of each input's action distribution: 0 when one action is
  certain, log2 K when all K are equally likely;
- I(class; action): the mutual information between the label and the argmax action of a gate,
  a plug-in estimate from the empirical joint (biased upward by about (C-1)(A-1) / (2 N ln 2)
  bits for C classes and A used actions); at most H(class), reached when the action names the class;
- utilisation ratio: the largest action share over the mean share 1/K, i.e. max share * K;
  1 when every action is chosen equally often, K when one action takes every input (collapse).

>>> table = path_health_table(outputs.log_probs, outputs.paths, outputs.labels)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LOG_FIELDS = {"test_entropy": "entropy", "test_mi": "mi", "test_utilisation": "utilisation"}  # log key: table column


def decision_entropy(log_probs: np.ndarray) -> np.ndarray:
    """(N, L) entropy in bits of each input's action distribution per gate, from (N, L, K)
    log-probabilities (natural log, as the decision units give them)."""
    log_p = log_probs.astype(np.float64)
    p = np.exp(log_p)
    log_p = np.where(p > 0, log_p, 0.0)  # 0 log 0 = 0, also for log-probabilities of -inf
    return np.clip(-(p * log_p).sum(axis=2) / np.log(2), 0.0, None)


def _entropy(counts: np.ndarray) -> float:
    """Entropy in bits of the empirical distribution given by ``counts``."""
    p = counts[counts > 0] / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def class_entropy(labels: np.ndarray) -> float:
    """H(class) in bits of the empirical label distribution: the ceiling of I(class; action)."""
    return _entropy(np.unique(labels, return_counts=True)[1])


def class_action_information(paths: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(L,) plug-in I(class; argmax action) in bits per gate, from (N, L) paths and (N,) labels;
    divide by :func:`class_entropy` for the share of the label's information a gate carries."""
    _, y = np.unique(labels, return_inverse=True)  # classes as 0..C-1
    info = np.zeros(paths.shape[1])
    for l in range(paths.shape[1]):
        _, a = np.unique(paths[:, l], return_inverse=True)  # used actions as 0..A-1
        joint = np.bincount(y * (a.max() + 1) + a, minlength=(y.max() + 1) * (a.max() + 1))
        # I = H(C) + H(A) - H(C, A); rounding can leave a tiny negative
        info[l] = max(0.0, _entropy(np.bincount(y)) + _entropy(np.bincount(a)) - _entropy(joint))
    return info


def action_shares(paths: np.ndarray, num_actions: int) -> np.ndarray:
    """(L, K) share of the inputs choosing each action at each gate."""
    counts = np.stack([np.bincount(paths[:, l], minlength=num_actions) for l in range(paths.shape[1])])
    return counts / max(1, len(paths))


def utilisation_ratio(paths: np.ndarray, num_actions: int) -> np.ndarray:
    """(L,) max action share / mean action share per gate (= max share * K): 1 is even use, K collapse."""
    return action_shares(paths, num_actions).max(axis=1) * num_actions


def actions_used(paths: np.ndarray, num_actions: int) -> np.ndarray:
    """(L,) number of distinct actions chosen at least once per gate."""
    return (action_shares(paths, num_actions) > 0).sum(axis=1)


def transition_counts(paths: np.ndarray, layer: int, num_actions: int) -> np.ndarray:
    """(K, K) counts of inputs choosing action i at gate ``layer`` (row) and j at gate ``layer + 1`` (column)."""
    if not 0 <= layer < paths.shape[1] - 1:
        raise ValueError(f"layer is {layer}; expected a gate followed by another, 0 to {paths.shape[1] - 2}")
    pairs = paths[:, layer] * num_actions + paths[:, layer + 1]
    return np.bincount(pairs, minlength=num_actions * num_actions).reshape(num_actions, num_actions)


def path_health_table(log_probs: np.ndarray, paths: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per gate: ``gate``, ``entropy`` (mean over inputs, bits), ``entropy_max`` (log2 K),
    ``mi`` (I(class; action), bits), ``mi_share`` (mi / H(class); NaN when there is one class),
    ``utilisation`` (max share * K) and ``actions_used`` (of K)."""
    k = log_probs.shape[2]
    mi = class_action_information(paths, labels)
    h_class = class_entropy(labels)
    return pd.DataFrame({
        "gate": np.arange(paths.shape[1]),
        "entropy": decision_entropy(log_probs).mean(axis=0),
        "entropy_max": np.full(paths.shape[1], np.log2(k)),
        "mi": mi,
        "mi_share": mi / h_class if h_class > 0 else np.full(paths.shape[1], np.nan),
        "utilisation": utilisation_ratio(paths, k),
        "actions_used": actions_used(paths, k),
    })


def epoch_record(log_probs: np.ndarray, paths: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """The per-gate path health a training epoch logs (keys of :data:`LOG_FIELDS`, one value per
    gate, all finite); empty for an ungated network."""
    if paths.shape[1] == 0:
        return {}
    table = path_health_table(log_probs, paths, labels)
    return {key: [round(float(v), 6) for v in table[column]] for key, column in LOG_FIELDS.items()}


def health_over_epochs(log: pd.DataFrame) -> pd.DataFrame:
    """Long table (``phase``, ``epoch``, ``gate`` and the :data:`LOG_FIELDS` columns) of the
    path health a training log recorded per epoch; empty when the log predates it."""
    if not set(LOG_FIELDS) <= set(log.columns):
        return pd.DataFrame()
    rows = log.dropna(subset=list(LOG_FIELDS))
    records = [
        {"phase": r["phase"], "epoch": int(r["epoch"]), "gate": g,
         **{column: float(r[key][g]) for key, column in LOG_FIELDS.items()}}
        for _, r in rows.iterrows() for g in range(len(r["test_entropy"]))
    ]
    return pd.DataFrame(records)
