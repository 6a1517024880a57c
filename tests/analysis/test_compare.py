import dataclasses

import numpy as np
import pytest

from analysis.compare import compare_runs, mask_similarity, match_masks, path_agreement
from conftest import BASELINE_RUN, DEFAULT_RUN


def _bank(rng, k: int, c: int) -> np.ndarray:
    """(k, c) distinct random masks in [0, 5] with about a third of the entries exactly 0."""
    return rng.uniform(0.1, 5.0, (k, c)) * (rng.random((k, c)) > 0.3)


def test_matching_a_row_permuted_copy_recovers_the_permutation_with_similarity_one():
    rng = np.random.default_rng(1)
    bank = _bank(rng, 12, 32)
    perm = rng.permutation(12)  # row i of the copy is row perm[i] of the bank
    match = match_masks(bank, bank[perm])
    assert (match.to_b[perm] == np.arange(12)).all()
    assert np.allclose(match.similarity, 1.0) and match.mean_similarity == pytest.approx(1.0)
    assert match.matrix.shape == (12, 12) and match.chance_similarity == pytest.approx(match.matrix.mean())
    assert match.chance_similarity < 0.95  # distinct masks: a random matching does worse


def test_mask_similarity_is_cosine_scale_free_and_zero_for_disjoint_or_empty_masks():
    a = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    b = np.array([[3.0, 3.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    sim = mask_similarity(a, b)
    assert sim.shape == (3, 2)
    assert sim[0, 0] == pytest.approx(1.0) and sim[0, 1] == 0.0  # same pattern, 3x the scale; disjoint
    assert (sim[1] == 0).all()  # an all-zero mask
    assert sim[2, 0] == pytest.approx(0.5) and sim[2, 1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"same C channels; got \(3, 4\) and \(2, 3\)"):
        mask_similarity(a, b[:, :3])


def test_more_masks_in_a_than_in_b_leaves_the_least_similar_unmatched():
    rng = np.random.default_rng(2)
    bank = _bank(rng, 5, 16)
    match = match_masks(bank, bank[[3, 0, 4]])
    assert match.to_b.tolist() == [1, -1, -1, 0, 2] and np.isnan(match.similarity[[1, 2]]).all()
    paths_a = np.array([[0], [1], [3], [4]])
    paths_b = np.array([[1], [1], [0], [2]])
    agreement = path_agreement(paths_a, paths_b, [match])
    assert agreement.per_gate.tolist() == [0.75]  # action 1 of A has no match: that input disagrees


def test_paths_permuted_like_the_masks_agree_everywhere():
    rng = np.random.default_rng(3)
    banks = [_bank(rng, 6, 8), _bank(rng, 6, 16)]
    perms = [rng.permutation(6) for _ in banks]
    matches = [match_masks(b, b[p]) for b, p in zip(banks, perms)]
    paths_a = rng.integers(0, 6, (200, 2))
    paths_b = np.stack([np.argsort(p)[paths_a[:, l]] for l, p in enumerate(perms)], axis=1)  # B's name of A's mask
    agreement = path_agreement(paths_a, paths_b, matches)
    assert agreement.per_gate.tolist() == [1.0, 1.0] and agreement.whole_path == 1.0
    # chance: sum over actions of the squared action shares, per gate; over whole paths, of squared path shares
    for l in range(2):
        shares = np.bincount(paths_a[:, l], minlength=6) / 200
        assert agreement.chance_per_gate[l] == pytest.approx((shares ** 2).sum())
    _, counts = np.unique(paths_a, axis=0, return_counts=True)
    assert agreement.chance_whole_path == pytest.approx(((counts / 200) ** 2).sum())


def test_agreement_and_chance_on_a_hand_counted_case():
    identity = match_masks(np.eye(2), np.eye(2))
    a = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    b = np.array([[0, 0], [1, 1], [0, 0], [1, 0]])
    agreement = path_agreement(a, b, [identity, identity])
    assert agreement.per_gate.tolist() == [0.5, 0.75]
    assert agreement.chance_per_gate.tolist() == [0.5, 0.5]  # 1/2 * 1/2 + 1/2 * 1/2; 1/2 * 3/4 + 1/2 * 1/4
    assert agreement.whole_path == 0.25  # input 0 only
    # A takes four paths 1/4 each; B takes (0,0) 1/2, (1,1) 1/4, (1,0) 1/4
    assert agreement.chance_whole_path == pytest.approx(0.25 * 0.5 + 0.25 * 0.25 + 0.25 * 0.25)
    with pytest.raises(ValueError, match=r"same inputs and gates; got \(4, 2\) and \(3, 2\)"):
        path_agreement(a, b[:3], [identity, identity])
    with pytest.raises(ValueError, match="2 gates but 1 matchings"):
        path_agreement(a, b, [identity])


def _outputs(path):
    from analysis.outputs_cache import stored_outputs
    from models import load_run

    run = load_run(path)
    return run, stored_outputs(run, "test")


def test_relabelled_runs_are_matched_back_and_agree_on_every_input(relabelled_runs):
    path_a, path_b, perms = relabelled_runs
    run_a, out_a = _outputs(path_a)
    run_b, out_b = _outputs(path_b)
    assert (out_a.paths != out_b.paths).any()  # the raw action numbers differ...
    result = compare_runs(run_a, out_a, run_b, out_b)
    assert result.note is None
    for match, perm in zip(result.matches, perms):
        assert (match.to_b[perm] == np.arange(4)).all() and np.allclose(match.similarity, 1.0)
    assert result.agreement.per_gate.tolist() == [1.0] * 4 and result.agreement.whole_path == 1.0  # ...not the paths
    assert (result.agreement.chance_per_gate < 1).all()  # the untrained gates do use several actions
    assert result.accuracy[0] == result.accuracy[1]
    assert np.allclose(result.utilisation[0], result.utilisation[1])


def test_a_shipped_run_against_itself_and_against_its_ungated_baseline():
    dynamic, out_d = _outputs(DEFAULT_RUN)
    baseline, out_b = _outputs(BASELINE_RUN)
    same = compare_runs(dynamic, out_d, dynamic, out_d)
    assert same.agreement.whole_path == 1.0 and same.agreement.chance_whole_path < 0.05  # 269 distinct paths
    assert same.accuracy == (out_d.accuracy, out_d.accuracy)

    result = compare_runs(dynamic, out_d, baseline, out_b)
    assert result.matches is None and result.agreement is None
    assert result.note.startswith("No mask matching: run B is ungated")
    assert result.accuracy == (out_d.accuracy, out_b.accuracy) and result.num_actions == (40, 0)
    assert result.macs_ratio[1].tolist() == [1.0] * 1000 and 0.3 < result.macs_ratio[0].mean() < 0.6
    assert len(result.utilisation[0]) == 4 and len(result.utilisation[1]) == 0
    assert (result.utilisation[0] >= 1).all()


def test_runs_with_different_input_shapes_are_refused_with_both_shapes(relabelled_runs):
    path_a, path_b, _ = relabelled_runs
    run_a, out_a = _outputs(path_a)
    run_b = dataclasses.replace(run_a, path=path_b, meta=dataclasses.replace(run_a.meta, input_shape=[3, 32, 32]))
    with pytest.raises(ValueError, match=r"different input shapes.*takes 1x28x28 inputs, .*b takes 3x32x32"):
        compare_runs(run_a, out_a, run_b, out_a)


def test_other_gate_widths_or_other_inputs_say_why_there_is_no_matching(relabelled_runs, tmp_path):
    from models import build_model, save_run

    path_a, path_b, _ = relabelled_runs
    run_a, out_a = _outputs(path_a)
    meta = dataclasses.replace(run_a.meta, arch_args={**run_a.meta.arch_args, "widths": [16, 32, 64, 64, 96]})
    save_run(tmp_path / "narrow", build_model(meta), meta)
    run_n, out_n = _outputs(tmp_path / "narrow")
    result = compare_runs(run_a, out_a, run_n, out_n)
    assert result.matches is None
    assert "widths differ (channels per gate [32, 64, 64, 128] and [32, 64, 64, 96])" in result.note

    run_b, out_b = _outputs(path_b)
    fewer = dataclasses.replace(out_b, **{f: getattr(out_b, f)[:500] for f in
                                          ("labels", "preds", "log_probs", "paths", "active", "macs")})
    result = compare_runs(run_a, out_a, run_b, fewer)
    assert result.agreement is None and len(result.matches) == 4  # the masks still match
    assert result.note.startswith("No path agreement: the runs were evaluated on different inputs")
