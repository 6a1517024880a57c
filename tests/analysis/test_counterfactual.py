import copy

import numpy as np
import pytest
import torch

from analysis import load_dataset
from analysis.counterfactual import counterfactual, runner_up
from analysis.paths import changed_layers, decision_path
from conftest import DEFAULT_RUN
from models import cost_model, forced_actions, gated_convs, load_run


@pytest.fixture(scope="module")
def model():
    return load_run(DEFAULT_RUN).model


@pytest.fixture(scope="module")
def x():
    return load_dataset("mnist5k", "test").dataset.tensors[0][3:4]


def test_forcing_the_action_already_taken_changes_nothing(model, x):
    path = decision_path(model, x)
    for layer in range(len(path.actions)):
        cf = counterfactual(model, x, {layer: int(path.actions[layer])})
        assert np.array_equal(cf.forced.actions, path.actions)
        assert np.allclose(cf.forced.class_probs, path.class_probs)
        assert cf.macs_change == 0 and cf.knock_on == []


def test_forcing_the_runner_up_takes_it_and_only_later_gates_react(model, x):
    path = decision_path(model, x)
    layer = 1
    other = runner_up(path, layer)
    assert other != path.actions[layer]
    assert path.probs[layer, other] == np.sort(path.probs[layer])[-2]
    cf = counterfactual(model, x, {layer: other})
    assert cf.forced.actions[layer] == other
    assert np.array_equal(cf.forced.actions[:layer], path.actions[:layer])  # earlier gates cannot see it
    assert np.allclose(cf.forced.probs[:layer + 1], path.probs[:layer + 1], atol=1e-6)  # nor its own unit
    assert set(cf.knock_on) == {l for l in changed_layers(path, cf.forced) if l > layer}
    assert gated_convs(model)[layer].forced is None  # the model is left as it was


@pytest.mark.parametrize("switched_off", ["all", "half"])
def test_a_forced_row_of_zeros_at_the_last_gate_removes_exactly_those_channels_macs(model, x, switched_off):
    net = copy.deepcopy(model)
    last = len(gated_convs(net)) - 1
    bank = gated_convs(net)[last].bank.weight
    channels = bank.shape[1]
    off = channels if switched_off == "all" else channels // 2
    path = decision_path(net, x)
    row = (int(path.actions[last]) + 1) % bank.shape[0]  # a row the input did not choose
    with torch.no_grad():
        bank[row] = 1.0
        bank[row, :off] = 0.0
    cf = counterfactual(net, x, {last: row})
    assert cf.forced.active[last] == channels - off
    # every costed layer is unit_macs * c_in * c_out: the ones that produce or read the last gate's
    # channels lose the switched-off share, the others are unchanged (no gate follows the last one)
    expected = 0.0
    for i, layer in enumerate(cost_model(net, tuple(x.shape[1:])).layers):
        touched = (layer.in_gate == last) + (layer.out_gate == last)
        own = path.active[last]
        factual = path.layer_macs[i]
        assert touched < 2
        expected += factual * (channels - off) / own if touched else factual
    assert cf.forced.layer_macs.sum() == pytest.approx(expected)
    if switched_off == "all":
        touched = [i for i, l in enumerate(cost_model(net, tuple(x.shape[1:])).layers) if last in (l.in_gate, l.out_gate)]
        assert np.all(cf.forced.layer_macs[touched] == 0)
        assert cf.macs_change == pytest.approx(-path.layer_macs[touched].sum())


def test_forcing_a_gate_or_action_that_does_not_exist_says_so(model, x):
    gates = len(gated_convs(model))
    with pytest.raises(ValueError, match=f"gate {gates} does not exist"):
        counterfactual(model, x, {gates: 0})
    with pytest.raises(ValueError, match="gate 0 has actions 0..") as e:
        with forced_actions(model, {0: 10_000}):
            pass
    assert "10000" in str(e.value)
    with pytest.raises(ValueError, match="at least one gate"):
        counterfactual(model, x, {})
    assert all(g.forced is None for g in gated_convs(model))
