"""Two runs side by side: accuracy, counted MACs, gate utilisation and, for two dynamic runs of
the same architecture, their masks matched one-to-one and how often the same inputs take the
matched masks.

The matching answers "are the paths a property of the data or of the seed?": the masks of the
two runs are paired per gate by similarity alone (no input is looked at), then the test inputs
are run through both. If most inputs choose matched masks in both runs, well above the chance
level of two independent choosers with the same action frequencies, the routing follows the
data; near chance, it is an accident of the seed.

>>> result = compare_runs(run_a, outputs_a, run_b, outputs_b)
>>> result.agreement.per_gate, result.agreement.chance_per_gate
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from models import Run, gated_convs

from .evaluation import Outputs
from .path_health import utilisation_ratio


@dataclass(frozen=True)
class MaskMatch:
    """One gate's one-to-one matching of run A's K_a masks to run B's K_b masks."""

    to_b: np.ndarray  # (K_a,) the action of B matched to each action of A; -1 unmatched (K_a > K_b)
    similarity: np.ndarray  # (K_a,) similarity of each matched pair; NaN unmatched
    matrix: np.ndarray  # (K_a, K_b) similarity of every pair of masks
    chance_similarity: float  # mean of ``matrix``: what a random one-to-one matching gets on average

    @property
    def mean_similarity(self) -> float:
        """Mean similarity of the matched pairs."""
        return float(np.nanmean(self.similarity))


@dataclass(frozen=True)
class PathAgreement:
    """How often run B took the match of run A's action, over the same N inputs and L gates."""

    per_gate: np.ndarray  # (L,) share of inputs whose action in B is the match of their action in A
    chance_per_gate: np.ndarray  # (L,) the same share for independent choices: sum_a pA(a) pB(match(a))
    whole_path: float  # share of inputs whose matched path agrees at every gate
    chance_whole_path: float  # the same for independent choices of whole paths with these path frequencies


@dataclass(frozen=True)
class Comparison:
    """Run A against run B on the same split (see :func:`compare_runs`)."""

    accuracy: tuple[float, float]
    macs: tuple[np.ndarray, np.ndarray]  # (N_a,), (N_b,) counted MACs of each input
    ungated_macs: tuple[int, int]  # counted MACs of each architecture without gates
    utilisation: tuple[np.ndarray, np.ndarray]  # (L_a,), (L_b,) max action share * K per gate; empty when ungated
    num_actions: tuple[int, int]  # K of each run (0 when ungated)
    matches: list[MaskMatch] | None  # one per gate, when both runs are dynamic with matching gates
    agreement: PathAgreement | None  # when matched and both ran on the same inputs
    note: str | None  # why there is no matching or agreement (None when there are both)

    @property
    def macs_ratio(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-input counted MACs over each run's own ungated network."""
        return self.macs[0] / self.ungated_macs[0], self.macs[1] / self.ungated_macs[1]


def mask_similarity(bank_a: np.ndarray, bank_b: np.ndarray) -> np.ndarray:
    """(K_a, K_b) cosine similarity between the rows of two (K, C) mask banks over the same C channels.

    Cosine, because what a mask does is which channels it keeps and in what proportion: it is 1
    for the same pattern at any scale, 0 for masks keeping disjoint channels (entries are >= 0, so
    it never goes below 0). An all-zero row has similarity 0 with every row. Channel j of one
    bank is compared with channel j of the other, which means something only when the two
    networks' channels correspond (e.g. both were fine-tuned from the same pretrained weights)."""
    if bank_a.ndim != 2 or bank_b.ndim != 2 or bank_a.shape[1] != bank_b.shape[1]:
        raise ValueError(f"mask banks must be (K, C) over the same C channels; got {bank_a.shape} and {bank_b.shape}")
    a, b = (x.astype(np.float64) for x in (bank_a, bank_b))
    norm_a = np.linalg.norm(a, axis=1, keepdims=True)
    norm_b = np.linalg.norm(b, axis=1, keepdims=True)
    a = np.divide(a, norm_a, out=np.zeros_like(a), where=norm_a > 0)
    b = np.divide(b, norm_b, out=np.zeros_like(b), where=norm_b > 0)
    return np.clip(a @ b.T, -1.0, 1.0)


def match_masks(bank_a: np.ndarray, bank_b: np.ndarray) -> MaskMatch:
    """The one-to-one matching of the rows of ``bank_a`` (K_a, C) to those of ``bank_b`` (K_b, C)
    with the largest total :func:`mask_similarity` (Hungarian algorithm); min(K_a, K_b) pairs.

    >>> match = match_masks(bank, bank[perm])  # a row-permuted copy
    >>> (match.to_b[perm] == np.arange(len(perm))).all() and np.allclose(match.similarity, 1)
    True
    """
    sim = mask_similarity(bank_a, bank_b)
    rows, cols = linear_sum_assignment(sim, maximize=True)
    to_b = np.full(len(sim), -1)
    to_b[rows] = cols
    similarity = np.full(len(sim), np.nan)
    similarity[rows] = sim[rows, cols]
    return MaskMatch(to_b=to_b, similarity=similarity, matrix=sim, chance_similarity=float(sim.mean()))


def path_agreement(paths_a: np.ndarray, paths_b: np.ndarray, matches: list[MaskMatch]) -> PathAgreement:
    """Per gate, the share of inputs whose action in run B is the match (``matches[l].to_b``) of
    their action in run A, and the share whose whole path agrees; ``paths_a`` and ``paths_b`` are
    (N, L) argmax actions of the *same* inputs in the same order.

    The chance levels are what two runs choosing independently of the input would agree on,
    given the frequencies each run's actions (per gate) and whole paths have on these inputs."""
    if paths_a.shape != paths_b.shape or paths_a.ndim != 2:
        raise ValueError(f"paths must be (N, L) arrays of the same inputs and gates; got {paths_a.shape} and "
                         f"{paths_b.shape}")
    if len(matches) != paths_a.shape[1]:
        raise ValueError(f"paths have {paths_a.shape[1]} gates but {len(matches)} matchings were given")
    n = len(paths_a)
    if n == 0:
        raise ValueError("no inputs: path agreement needs at least one input")
    mapped = np.stack([m.to_b[paths_a[:, l]] for l, m in enumerate(matches)], axis=1)  # (N, L); -1 unmatched
    agree = mapped == paths_b
    chance = []
    for l, m in enumerate(matches):
        freq_a = np.bincount(paths_a[:, l], minlength=len(m.to_b)) / n  # (K_a,)
        freq_b = np.bincount(paths_b[:, l], minlength=m.matrix.shape[1]) / n  # (K_b,)
        chance.append(float((freq_a * np.where(m.to_b >= 0, freq_b[m.to_b], 0.0)).sum()))
    return PathAgreement(per_gate=agree.mean(axis=0), chance_per_gate=np.array(chance),
                         whole_path=float(agree.all(axis=1).mean()), chance_whole_path=_path_chance(mapped, paths_b))


def _path_chance(mapped_a: np.ndarray, paths_b: np.ndarray) -> float:
    """sum over whole paths p of freq_A(p) * freq_B(p), A's paths already mapped into B's actions."""
    paths, inverse = np.unique(np.concatenate([mapped_a, paths_b]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n = len(mapped_a)
    freq_a = np.bincount(inverse[:n], minlength=len(paths)) / n
    freq_b = np.bincount(inverse[n:], minlength=len(paths)) / n
    return float((freq_a * freq_b).sum())


def compare_runs(run_a: Run, out_a: Outputs, run_b: Run, out_b: Outputs) -> Comparison:
    """Accuracy, counted MACs and utilisation of two runs with the same input shape, each from its
    outputs on a split (:func:`analysis.collect`), and, when both are dynamic with the same
    architecture and gate widths and ran on the same inputs, their masks matched per gate
    (:func:`match_masks`) with the :func:`path_agreement` of the two runs' paths.

    Raises ValueError when the input shapes differ. ``note`` says why there is no matching."""
    check_comparable(run_a, run_b)
    k = tuple(int(o.log_probs.shape[2]) if o.paths.shape[1] else 0 for o in (out_a, out_b))
    matches, agreement, note = None, None, _why_no_matching(run_a, out_a, run_b, out_b)
    if note is None or note.startswith(_NO_AGREEMENT):
        banks = [[g.bank.weight.detach().cpu().numpy() for g in gated_convs(r.model)] for r in (run_a, run_b)]
        matches = [match_masks(a, b) for a, b in zip(*banks)]
    if note is None:
        agreement = path_agreement(out_a.paths, out_b.paths, matches)
    return Comparison(
        accuracy=(out_a.accuracy, out_b.accuracy), macs=(out_a.macs, out_b.macs),
        ungated_macs=(out_a.ungated_macs, out_b.ungated_macs),
        utilisation=tuple(utilisation_ratio(o.paths, kk) if kk else np.zeros(0) for o, kk in zip((out_a, out_b), k)),
        num_actions=k, matches=matches, agreement=agreement, note=note)


def check_comparable(run_a: Run, run_b: Run) -> None:
    """Raise ValueError, naming both runs and shapes, unless the two runs take the same input shape."""
    shape_a, shape_b = list(run_a.meta.input_shape), list(run_b.meta.input_shape)
    if shape_a != shape_b:
        raise ValueError(f"runs with different input shapes cannot be compared: {run_a.path} takes "
                         f"{'x'.join(map(str, shape_a))} inputs, {run_b.path} takes {'x'.join(map(str, shape_b))}")


_NO_AGREEMENT = "No path agreement"  # the masks could be matched, but the inputs differ


def _why_no_matching(run_a: Run, out_a: Outputs, run_b: Run, out_b: Outputs) -> str | None:
    """Why the two runs' masks cannot be matched, or their paths not compared (None: they can)."""
    ungated = [name for name, o in (("A", out_a), ("B", out_b)) if o.paths.shape[1] == 0]
    if ungated:
        which = "either run" if len(ungated) == 2 else f"run {ungated[0]}"
        return f"No mask matching: {which} is ungated (no gates, no masks to match); it needs two dynamic runs."
    if run_a.meta.arch != run_b.meta.arch:
        return (f"No mask matching: the architectures differ ({run_a.meta.arch} and {run_b.meta.arch}); masks are "
                "matched channel by channel, which needs the same architecture.")
    widths = [[g.bank.weight.shape[1] for g in gated_convs(r.model)] for r in (run_a, run_b)]
    if widths[0] != widths[1]:
        return (f"No mask matching: the gated layers' widths differ (channels per gate {widths[0]} and {widths[1]}); "
                "masks are matched channel by channel, which needs the same widths.")
    if run_a.meta.dataset != run_b.meta.dataset or not np.array_equal(out_a.labels, out_b.labels):
        return (f"{_NO_AGREEMENT}: the runs were evaluated on different inputs ({run_a.meta.dataset}, "
                f"{len(out_a.labels):,} inputs, and {run_b.meta.dataset}, {len(out_b.labels):,} inputs); "
                "agreement counts the same inputs in both runs.")
    return None
