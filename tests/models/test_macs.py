import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import active_channels, cost_model, create_model, list_models


def _shape(name):
    return (1, 28, 28) if name == "small_cnn" else (3, 32, 32)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("gated", [False, True])
def test_static_macs_match_torch_flop_counter(name, gated):
    net = create_model(name, gated=gated, in_channels=_shape(name)[0]).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.rand(1, *_shape(name)))
    assert 2 * cost_model(net, _shape(name)).static_macs == counter.get_total_flops()


def test_ungated_macs_are_the_same_with_and_without_gates():
    a = cost_model(create_model("resnet20", gated=False), (3, 32, 32))
    b = cost_model(create_model("resnet20", gated=True), (3, 32, 32))
    assert a.ungated_macs == b.ungated_macs
    assert b.static_macs - b.ungated_macs == b.decision_macs > 0


def test_dynamic_macs_of_a_hand_computed_case():
    # small_cnn: 28x28 -> conv0 (1->16) -> pool -> conv1 (16->32) 14x14 -> conv2 (32->64) 14x14
    # -> pool -> conv3 (64->64) 7x7 -> conv4 (64->128) 7x7 -> GAP -> fc (128->10); gates on conv1-4
    net = create_model("small_cnn", gated=True, num_actions=2).eval()
    with torch.no_grad():
        for g in net.convs[1:]:
            g.bank.weight.fill_(1.0)
        net.convs[2].bank.weight[:, 10:] = 0.0  # conv2 keeps 10 of its 64 outputs
        net.convs[4].bank.weight[:, 100:] = 0.0  # conv4 keeps 100 of 128
    _, decisions = net.decide(torch.rand(1, 1, 28, 28))
    expected = (
        28 * 28 * 9 * 1 * 16  # conv0, ungated
        + 14 * 14 * 9 * 16 * 32  # conv1
        + 14 * 14 * 9 * 32 * 10  # conv2: only 10 outputs computed
        + 7 * 7 * 9 * 10 * 64  # conv3: only 10 inputs read
        + 7 * 7 * 9 * 64 * 100  # conv4: 100 outputs
        + 100 * 10  # fc: 100 inputs
        + 2 * (16 + 32 + 64 + 64)  # decision units: C_in x K each
    )
    costs = cost_model(net, (1, 28, 28))
    assert costs.dynamic_macs(active_channels(decisions)).item() == expected


def test_a_tiny_but_non_zero_mask_entry_is_not_skipped():
    net = create_model("small_cnn", gated=True, num_actions=1).eval()
    with torch.no_grad():
        net.convs[1].bank.weight[:, :5] = 1e-6
    _, decisions = net.decide(torch.rand(1, 1, 28, 28))
    assert active_channels(decisions)[0].item() == 32
