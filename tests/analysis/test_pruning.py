import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import collect, load_dataset
from analysis.pruning import MaskSearch, StaticSearch, mask_banks, threshold_masks, uniform_structure
from models import cost_model, create_model

SHAPES = {"small_cnn": (1, 28, 28), "vgg11": (3, 32, 32), "vgg16": (3, 32, 32), "resnet20": (3, 32, 32),
          "resnet56": (3, 32, 32)}
COSTS = {name: cost_model(create_model(name, gated=False, in_channels=s[0]), s) for name, s in SHAPES.items()}


def _random_gates(costs, seed):
    rng = np.random.default_rng(seed)
    return [rng.random(w) for w in costs.source_widths]


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "resnet56", "small_cnn"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_predicted_macs_and_params_equal_the_real_pruned_network(name, target):
    costs = COSTS[name]
    s = StaticSearch(costs, _random_gates(costs, 1))(target)
    real = create_model(name, gated=False, widths=s.widths, in_channels=SHAPES[name][0])
    assert cost_model(real, SHAPES[name]).ungated_macs == s.macs
    assert sum(p.numel() for p in real.parameters()) == s.params


def test_resnet_pruning_never_touches_the_residual_stream():
    s = StaticSearch(COSTS["resnet20"], _random_gates(COSTS["resnet20"], 2))(0.5)
    real = create_model("resnet20", gated=False, widths=s.widths)
    assert [b.conv2.conv.out_channels for b in real.blocks] == [16] * 3 + [32] * 3 + [64] * 3
    assert [b.conv1.conv.out_channels for b in real.blocks] == s.widths


def test_an_unreachable_target_is_said_plainly():
    s = StaticSearch(COSTS["small_cnn"], _random_gates(COSTS["small_cnn"], 3))(0.999)
    assert not s.met and "cannot be met" in s.message and s.widths == [1] * 5


def test_gates_of_the_wrong_shape_or_value_are_refused():
    costs = COSTS["small_cnn"]
    with pytest.raises(ValueError, match="gates have sizes"):
        StaticSearch(costs, [np.ones(3)])
    gates = _random_gates(costs, 0)
    gates[2][0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        StaticSearch(costs, gates)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["small_cnn", "resnet20"]), seed=st.integers(0, 2**32 - 1),
       targets=st.lists(st.floats(0.0, 0.99), min_size=2, max_size=5), ties=st.booleans())
def test_search_properties(name, seed, targets, ties):
    costs = COSTS[name]
    gates = _random_gates(costs, seed)
    if ties:  # clamped gates: many exact 0s and 1s
        gates = [np.clip(g * 3 - 1, 0, 1) for g in gates]
    search = StaticSearch(costs, gates)
    results = [search(p) for p in sorted(targets)]
    reachable = [costs.macs_for_widths(search.widths(k)) for k in range(len(search._sorted) + 1)]
    for p, s in zip(sorted(targets), results):
        assert min(s.widths) >= 1
        goal = (1 - p) * s.full_macs
        if any(abs(m - goal) <= 1e-3 * goal for m in reachable):
            assert s.met and abs(s.macs - goal) <= 1e-3 * goal
    macs = [s.macs for s in results]
    assert all(a >= b for a, b in zip(macs, macs[1:])), "a larger target never keeps more MACs"


def test_uniform_structure_comes_close_to_the_target_with_proportional_widths():
    s = uniform_structure(COSTS["vgg16"], 0.5)
    assert abs(s.reduction - 0.5) < 0.005  # one shared factor: rounding limits how close it gets
    ratios = np.array(s.widths) / np.array(s.full_widths)
    assert ratios.max() - ratios.min() < 0.05


@pytest.fixture(scope="module")
def dynamic_setup():
    from conftest import DEFAULT_RUN
    from models import load_run

    run = load_run(DEFAULT_RUN)
    test = load_dataset("mnist5k", "test")
    out = collect(run.model, test)
    search = MaskSearch(cost_model(run.model, (1, 28, 28)), mask_banks(run.model), out.paths)
    return run, test, out, search


def test_mask_search_without_threshold_predicts_the_counted_macs(dynamic_setup):
    _, _, out, search = dynamic_setup
    assert search.ratio(0.0) == pytest.approx(out.macs_ratio.mean(), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(targets=st.lists(st.floats(0.0, 0.95), min_size=2, max_size=4))
def test_mask_search_is_monotone_and_its_prediction_is_exact_for_cached_paths(dynamic_setup, targets):
    run, _, out, search = dynamic_setup
    results = [search(p) for p in sorted(targets)]
    ratios = [r.predicted_ratio for r in results]
    assert all(a >= b for a, b in zip(ratios, ratios[1:]))
    for r in results:  # one quantity: the reduction asked for against the reduction given
        if not r.met:
            assert f"target reduction {r.target:.1%} not met" in r.message
            assert f"a reduction of {1 - r.predicted_ratio:.1%} (keeps {r.predicted_ratio:.1%}" in r.message
    r = results[-1]
    # recount by hand: thresholded bank rows picked by the cached paths
    banks = mask_banks(threshold_masks(run.model, r.threshold))
    active = [torch.from_numpy((b != 0).sum(1))[torch.from_numpy(out.paths[:, g])] for g, b in enumerate(banks)]
    expected = float(search.costs.dynamic_macs(active).mean()) / search.costs.ungated_macs
    assert r.predicted_ratio == pytest.approx(expected, rel=1e-12)


def test_thresholding_the_masks_leaves_the_original_model_alone(dynamic_setup):
    run, test, out, search = dynamic_setup
    before = [b.copy() for b in mask_banks(run.model)]
    r = search(0.7)
    pruned = threshold_masks(run.model, r.threshold)
    assert all(np.array_equal(a, b) for a, b in zip(before, mask_banks(run.model)))
    evaluated = collect(pruned, test)
    # decisions may change after thresholding, so the counted ratio is near, not equal to, the prediction
    assert abs(evaluated.macs_ratio.mean() - r.predicted_ratio) < 0.05
    assert evaluated.macs_ratio.mean() < out.macs_ratio.mean()


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not standard JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("name", ["small_cnn", "resnet20"])
def test_target_zero_structures_are_standard_json_with_no_threshold(name):
    costs = COSTS[name]
    for s in (StaticSearch(costs, _random_gates(costs, 4))(0.0), uniform_structure(costs, 0.0)):
        assert s.widths == s.full_widths
        assert s.threshold is None  # nothing pruned: no gate value to name
        _strict(json.dumps(s.to_json()))


def test_a_structure_built_at_target_zero_writes_standard_json(tmp_path):
    from analysis.scratch import save_structure
    from models import RunMeta

    costs = COSTS["small_cnn"]
    source = RunMeta(arch="small_cnn", arch_args={"gated": False, "num_classes": 10, "in_channels": 1},
                     dataset="mnist5k", class_names=[str(i) for i in range(10)], input_shape=[1, 28, 28],
                     mean=[0.1307], std=[0.3081])
    save_structure(source, StaticSearch(costs, _random_gates(costs, 5))(0.0), tmp_path / "built")
    for name in ("structure.json", "model.json"):
        _strict((tmp_path / "built" / name).read_text())


def _clamped_gates(costs, seed):
    """Gates as learning clamps them to [0, 1]: about a third exactly 0, a third exactly 1."""
    return [np.clip(g * 3 - 1, 0, 1) for g in _random_gates(costs, seed)]


def _channel_savings(costs) -> np.ndarray:
    full = np.array(costs.source_widths)
    return np.array([costs.macs_for_widths(full) - costs.macs_for_widths(full - np.eye(len(full), dtype=int)[i])
                     for i in range(len(full))])


@pytest.mark.parametrize("name", ["small_cnn", "resnet20", "vgg11"])
@pytest.mark.parametrize("target", [0.02, 0.1, 0.3, 0.6])
def test_the_reported_threshold_describes_the_structure_exactly_with_tied_gates(name, target):
    costs = COSTS[name]
    gates = _clamped_gates(costs, 7)
    s = StaticSearch(costs, gates)(target)
    t = s.threshold
    pruned = np.array(s.full_widths) - np.array(s.widths)
    assert t is not None and pruned.sum() > 0
    # each layer keeps its largest gate; of the rest, every gate below t goes, every gate above stays,
    # and s.pruned_at_threshold of the s.at_threshold gates equal to t go
    rest = [np.delete(g, np.argmax(g)) for g in gates]
    below = np.array([(g < t).sum() for g in rest])
    at = np.array([(g == t).sum() for g in rest])
    assert s.at_threshold == at.sum() and 0 < s.pruned_at_threshold <= s.at_threshold
    assert (pruned >= below).all() and (pruned <= below + at).all()
    assert (pruned - below).sum() == s.pruned_at_threshold
    if s.pruned_at_threshold == s.at_threshold:
        assert (pruned == np.array([(g <= t).sum() for g in rest])).all(), "gates <= threshold are exactly the pruned"


def test_tied_gates_are_pruned_where_a_channel_saves_the_most_macs_not_in_layer_order():
    costs = COSTS["small_cnn"]
    gates = _clamped_gates(costs, 8)
    s = StaticSearch(costs, gates)(0.02)  # far fewer channels than there are zero gates
    rest = [np.delete(g, np.argmax(g)) for g in gates]
    tied_pruned = np.array(s.full_widths) - np.array(s.widths) - np.array([(g < s.threshold).sum() for g in rest])
    tied_kept = np.array([(g == s.threshold).sum() for g in rest]) - tied_pruned
    assert s.threshold == 0.0 and tied_kept.sum() > 0
    saving = _channel_savings(costs)
    assert saving[tied_pruned > 0].min() >= saving[tied_kept > 0].max()
    assert tied_pruned[np.argmax(saving)] > 0, "the costliest layer's zero gates go first, whatever its position"


def test_mask_threshold_re_searched_on_its_own_decisions_meets_the_target_it_evaluates_at(dynamic_setup):
    from analysis.pruning import refined_mask_threshold

    run, test, out, search = dynamic_setup
    found, evaluated = refined_mask_threshold(run.model, test, search, 0.75)
    goal = 0.25
    # the cached decisions alone choose a threshold whose evaluated MACs overshoot (0.2598 for 0.25)
    assert abs(found.evaluated_ratio - goal) <= 1e-3 * goal and found.met
    assert 1 <= found.rounds <= 5
    assert found.evaluated_ratio == pytest.approx(float(evaluated.macs_ratio.mean()), rel=1e-12)
    again = collect(threshold_masks(run.model, found.threshold), test)
    assert float(again.macs_ratio.mean()) == pytest.approx(found.evaluated_ratio, rel=1e-12)
    assert found.predicted_ratio == pytest.approx(search.ratio(found.threshold), rel=1e-12)  # cached decisions


def test_an_already_met_mask_target_is_evaluated_once_and_left_alone(dynamic_setup):
    from analysis.pruning import refined_mask_threshold

    run, test, out, search = dynamic_setup
    found, evaluated = refined_mask_threshold(run.model, test, search, 0.3)  # the model sits near 43%
    assert found.threshold == 0.0 and found.rounds == 1 and found.met
    assert found.evaluated_ratio == pytest.approx(float(out.macs_ratio.mean()), rel=1e-12)


def test_prune_search_on_a_dynamic_run_prints_the_evaluated_and_the_predicted_figure(capsys):
    from app.cli import main
    from conftest import DEFAULT_RUN

    assert main(["prune", "search", str(DEFAULT_RUN), "--target", "0.75"]) == 0
    out = capsys.readouterr().out
    assert "evaluated 25.0% of the ungated MACs" in out and "predicted" in out, out
