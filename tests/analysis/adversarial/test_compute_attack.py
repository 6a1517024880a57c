"""The ``compute`` attack (inputs made expensive) and its report: a known answer on a hand-built
gated net, the surrogate against the exact count, and the shipped model's MACs going up."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from analysis.adversarial.attacks import AttackResult, create_attack, default_params, list_attacks
from analysis.adversarial.compute_attack import (
    ComputeAttack, compute_attack_report, eps_label, expected_active_channels,
)
from conftest import DEFAULT_RUN, fuzz
from models import Decision, active_channels, cost_model, load_run
from models.chain import ConvChain

SIDE = 8  # the hand-built net's images are 1 x 8 x 8
THRESHOLD = 0.5  # its gated layer picks the expensive action when the mean pixel is above this
WIDE, NARROW = 8, 4  # active channels of its expensive and its cheap action


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small models on a busy 2-core machine: one thread is faster (see test_attacks.py)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _threshold_net() -> ConvChain:
    """conv0 (ungated, 1 -> 4) copies the image into 4 channels; the gated conv1 (4 -> 8) picks
    action 0 (all 8 channels) when the mean pixel exceeds THRESHOLD, else action 1 (4 channels)."""
    net = ConvChain((4, 8), gated=True, num_classes=2, in_channels=1, num_actions=2).eval()
    gate = net.convs[1]
    with torch.no_grad():
        net.convs[0].conv.weight.zero_()
        net.convs[0].conv.weight[:, 0, 1, 1] = 1.0  # centre tap: every channel is the image itself
        gate.decision.norm.running_mean.fill_(THRESHOLD)  # standardised features: mean pixel - THRESHOLD
        gate.decision.linear.weight.copy_(torch.tensor([[0.5] * 4, [-0.5] * 4]))  # unit rows, logit gap 2 (m - T)
        gate.bank.weight.fill_(1.0)
        gate.bank.weight[1, NARROW:] = 0.0
    return net


def _gray(values) -> torch.Tensor:
    """One constant 1 x SIDE x SIDE image per value."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, SIDE, SIDE).clone()


def _counted(model, x: torch.Tensor) -> torch.Tensor:
    """Exact counted MACs (B,) of the argmax decisions, recounted here from the cost table."""
    with torch.no_grad():
        _, decisions = model.eval().decide(x)
    return cost_model(model, tuple(x.shape[1:])).dynamic_macs(active_channels(decisions))


@pytest.fixture(scope="module")
def shipped():
    from analysis import load_dataset

    model = load_run(DEFAULT_RUN).model
    x, y = load_dataset("mnist5k", "test").dataset.tensors
    return model, x[:64], y[:64]


# ---------------------------------------------------------------- known answers


def test_the_attack_reaches_the_expensive_action_when_the_budget_allows():
    net, eps = _threshold_net(), 8 / 255
    # mean pixel 0.48 and 0.49: eps lifts them over 0.5; 0.40 is out of reach; 0.60 is already wide
    x = _gray([0.48, 0.49, 0.40, 0.60])
    with torch.no_grad():
        assert net.decide(x)[1][0].action.tolist() == [1, 1, 1, 0]
    result = create_attack("compute", net, eps=eps, step_size=eps / 4, steps=8)(x, torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        after = net.decide(result.x_adv)[1][0].action
    assert after.tolist() == [0, 0, 1, 0]
    # the surrogate's gradient raises every pixel by a step: 0.48 turns wide after 3 steps of
    # eps / 4, 0.49 after 2; each input keeps its first iterate of highest cost (x if none beat it)
    torch.testing.assert_close(result.x_adv[:2], x[:2] + torch.tensor([3, 2]).view(-1, 1, 1, 1) * eps / 4,
                               rtol=0, atol=1e-6)
    assert torch.equal(result.x_adv[2:], x[2:])
    # counted MACs of conv1 (4 -> c) and fc (c -> 2) follow the number c of active channels
    unit = SIDE * SIDE * 9
    fixed = unit * 1 * 4 + 2 * 4  # conv0, and the decision unit's 4 x 2 linear layer
    expected = [fixed + unit * 4 * c + c * 2 for c in (WIDE, WIDE, NARROW, WIDE)]
    assert _counted(net, result.x_adv).tolist() == expected


def test_the_surrogate_is_the_expected_number_of_active_channels():
    net = _threshold_net()
    x = _gray([0.3, 0.5, 0.7])
    with torch.no_grad():
        _, decisions = net.decide(x)
        p_wide = torch.softmax(decisions[0].logits / 2.0, dim=1)[:, 0]
        expected, = expected_active_channels(net, decisions, tau=2.0)
    torch.testing.assert_close(expected, WIDE * p_wide + NARROW * (1 - p_wide))
    torch.testing.assert_close(p_wide[1], torch.tensor(0.5))  # at the threshold both actions are equally likely


def test_the_surrogate_is_the_exact_count_for_one_hot_action_distributions(shipped):
    model, x, _ = shipped
    costs = cost_model(model, (1, 28, 28))
    with torch.no_grad():
        _, decisions = model.decide(x)
    # logits 1e4 apart: softmax is exactly one-hot in float32
    one_hot = [Decision(logits=1e4 * F.one_hot(d.action, d.logits.shape[1]).float(), action=d.action, mask=d.mask)
               for d in decisions]
    expected = expected_active_channels(model, one_hot)
    assert [e.tolist() for e in expected] == [a.float().tolist() for a in active_channels(decisions)]
    assert torch.equal(costs.dynamic_macs(expected), costs.dynamic_macs(active_channels(decisions)))


# ---------------------------------------------------------------- the shipped model


@pytest.mark.parametrize("eps, min_gain, min_share", [(8 / 255, 0.03, 0.4), (16 / 255, 0.08, 0.7)],
                         ids=["8/255", "16/255"])
def test_the_attack_raises_the_shipped_models_counted_macs(shipped, eps, min_gain, min_share):
    # measured on these 64 images: mean ratio 0.426 -> 0.485 (8/255, 56% of inputs dearer) and
    # -> 0.545 (16/255, 86% dearer)
    model, x, y = shipped
    ungated = cost_model(model, (1, 28, 28)).ungated_macs
    result = create_attack("compute", model, eps=eps, step_size=eps / 4)(x, y)
    gain = (_counted(model, result.x_adv) - _counted(model, x)) / ungated  # (B,)
    assert bool((gain >= 0).all())  # the best iterate by exact count: never cheaper than x
    assert gain.mean() >= min_gain
    assert (gain > 0).double().mean() >= min_share
    assert not model.training


def test_eps_zero_changes_nothing(shipped):
    model, x, y = shipped
    result = create_attack("compute", model, eps=0.0, steps=3)(x, y)
    assert torch.equal(result.x_adv, x)
    assert torch.equal(_counted(model, result.x_adv), _counted(model, x))


# ---------------------------------------------------------------- contract


@fuzz(25)
@given(eps=st.floats(0.0, 0.5), step_size=st.floats(1e-3, 0.5), steps=st.integers(0, 4),
       tau=st.floats(0.05, 5.0), seed=st.integers(0, 2**16), training=st.booleans())
def test_results_stay_in_the_eps_ball_and_the_pixel_range(eps, step_size, steps, tau, seed, training, tried):
    tried("compute attack")
    torch.manual_seed(seed)
    net = ConvChain((4, 8, 8), gated=True, num_classes=3, in_channels=1, num_actions=3).train(training)
    x = torch.rand(4, 1, SIDE, SIDE).round() if seed % 2 else torch.rand(4, 1, SIDE, SIDE)  # pixels at 0 and 1 too
    y = torch.randint(0, 3, (4,))
    result = create_attack("compute", net, eps=eps, step_size=step_size, steps=steps, tau=tau)(x, y)
    assert isinstance(result, AttackResult) and result.x_adv.shape == x.shape
    assert (result.x_adv - x).abs().max() <= eps + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert net.training is training
    assert all(p.grad is None for p in net.parameters())
    assert not result.x_adv.requires_grad


def test_the_attack_is_registered_with_json_params():
    assert "compute" in list_attacks()
    assert default_params("compute", "mnist") == default_params("compute", "cifar") == {
        "eps": 8 / 255, "step_size": 1 / 255, "steps": 20, "tau": 1.0}
    attack = create_attack("compute", _threshold_net(), eps=np.float32(0.5), steps=np.int64(3))
    assert json.loads(json.dumps(attack.params)) == attack.params
    assert type(attack.params["eps"]) is float and type(attack.params["steps"]) is int
    with pytest.raises(ValueError, match="tau must be > 0, got 0.0"):
        create_attack("compute", _threshold_net(), tau=0)


def test_a_network_without_gates_is_left_alone():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    x = torch.rand(2, 1, SIDE, SIDE)
    result = ComputeAttack(model, eps=0.1)(x, torch.tensor([0, 1]))
    assert torch.equal(result.x_adv, x)


# ---------------------------------------------------------------- the report


def test_the_report_is_json_and_agrees_with_a_recount(shipped):
    model, x, y = shipped
    x, y = x[:32], y[:32]
    report = compute_attack_report(model, x, y, input_shape=(1, 28, 28), eps_values=[0.0, 8 / 255], steps=5,
                                   batch_size=12)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert list(report["results"]) == ["0", "8/255"]
    ungated = report["ungated_macs"]
    assert ungated == cost_model(model, (1, 28, 28)).ungated_macs
    assert len(report["bin_edges"]) == 41 and report["bin_edges"][0] == 0 and report["bin_edges"][-1] == 1

    zero, eight = report["results"]["0"], report["results"]["8/255"]
    assert zero["after"] == zero["before"] and zero["share_increased"] == 0 and zero["mean_linf"] == 0

    assert eight["params"] == {"eps": 8 / 255, "step_size": 2 / 255, "steps": 5, "tau": 1.0}
    clean = _counted(model, x).numpy() / ungated
    x_adv = ComputeAttack(model, **eight["params"])(x, y).x_adv  # deterministic: the same inputs
    attacked = _counted(model, x_adv).numpy() / ungated
    for summary, ratio, images in ((eight["before"], clean, x), (eight["after"], attacked, x_adv)):
        with torch.no_grad():
            accuracy = (model(images).argmax(1) == y).double().mean().item()
        assert summary["mean_ratio"] == pytest.approx(ratio.mean())
        assert summary["max_ratio"] == pytest.approx(ratio.max())
        assert summary["share_high"] == pytest.approx((ratio > 0.75).mean())
        assert summary["accuracy"] == pytest.approx(accuracy)
        assert summary["hist"] == np.histogram(ratio.clip(0, 1), bins=40, range=(0, 1))[0].tolist()
        assert sum(summary["hist"]) == eight["n"] == 32
    assert eight["share_increased"] == pytest.approx((attacked > clean).mean())
    assert eight["after"]["mean_ratio"] > eight["before"]["mean_ratio"]
    assert eight["mean_linf"] == pytest.approx((x_adv - x).flatten(1).abs().amax(1).mean().item())
    with torch.no_grad():
        changed = (model(x_adv).argmax(1) != model(x).argmax(1)).double().mean().item()
    assert eight["prediction_changed"] == pytest.approx(changed)


def test_the_report_is_silent_unless_given_a_log(shipped, capsys):
    model, x, y = shipped
    lines = []
    compute_attack_report(model, x[:4], y[:4], input_shape=(1, 28, 28), eps_values=[2 / 255], steps=1)
    compute_attack_report(model, x[:4], y[:4], input_shape=(1, 28, 28), eps_values=[2 / 255], steps=1, log=lines.append)
    assert capsys.readouterr() == ("", "")
    assert len(lines) == 1 and lines[0].startswith("compute attack eps 2/255: mean MACs ratio")


def test_the_report_restores_training_mode_and_rejects_bad_input(shipped):
    model, x, y = shipped
    model.train()
    try:
        compute_attack_report(model, x[:2], y[:2], input_shape=(1, 28, 28), eps_values=[1 / 255], steps=1)
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match=r"x has images of shape \(1, 28, 28\); input_shape is \(3, 32, 32\)"):
        compute_attack_report(model, x, y, input_shape=(3, 32, 32), eps_values=[0.0])
    with pytest.raises(ValueError, match="eps_values repeat a budget: 8/255, 8/255"):
        compute_attack_report(model, x, y, input_shape=(1, 28, 28), eps_values=[8 / 255, 8 / 255])
    with pytest.raises(ValueError, match="no gated layers"):
        ungated = ConvChain((4, 8), gated=False, num_classes=2, in_channels=1)
        compute_attack_report(ungated, x, y, input_shape=(1, 28, 28), eps_values=[0.0])


def test_eps_labels():
    assert [eps_label(e) for e in (0.0, 2 / 255, 8 / 255, 0.3)] == ["0", "2/255", "8/255", "0.3"]
