import torch

from models import GatedConv, constrain_, set_tau
from models.gates import MASK_MAX


def _layer(k=4):
    return GatedConv(3, 6, gated=True, num_actions=k)


def test_training_samples_one_hot_actions_with_straight_through_gradients():
    layer = _layer().train()
    x = torch.rand(16, 3, 8, 8)
    decisions = []
    y = layer(x, decisions)
    d = decisions[0]
    # forward: each input's mask is exactly one bank row
    assert torch.equal(d.mask, layer.bank.weight[d.action])
    y.pow(2).sum().backward()
    # backward: the relaxed sample passes gradients to the decision unit and the bank
    assert layer.decision.linear.weight.grad.abs().sum() > 0
    assert layer.bank.weight.grad.abs().sum() > 0


def test_eval_takes_the_argmax_without_noise():
    layer = _layer().eval()
    x = torch.rand(32, 3, 8, 8)
    a, b = [], []
    layer(x, a)
    layer(x, b)
    assert torch.equal(a[0].action, a[0].logits.argmax(1))
    assert torch.equal(a[0].action, b[0].action)


def test_decision_unit_reads_the_relu_pooled_input():
    layer = _layer().eval()
    x = torch.rand(2, 3, 8, 8)
    pooled = torch.relu(x).mean(dim=(2, 3))
    norm = layer.decision.norm
    standardised = (pooled - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    expected = standardised @ layer.decision.linear.weight.T
    torch.testing.assert_close(layer.decision(x), expected)


def test_constraints_clamp_masks_and_normalise_decision_rows():
    layer = _layer()
    with torch.no_grad():
        layer.bank.weight.uniform_(-3, 9)
        layer.decision.linear.weight.mul_(7)
    constrain_(layer)
    assert layer.bank.weight.min() >= 0 and layer.bank.weight.max() <= MASK_MAX
    torch.testing.assert_close(layer.decision.linear.weight.norm(dim=1), torch.ones(4))


def test_a_zero_mask_entry_switches_the_channel_off():
    layer = _layer(k=1).eval()
    with torch.no_grad():
        layer.bank.weight[0, 2] = 0.0
    y = layer(torch.rand(4, 3, 8, 8))
    assert torch.count_nonzero(y[:, 2]) == 0
    assert torch.count_nonzero(y[:, 1]) > 0


def test_set_tau_reaches_every_gated_layer():
    from models import create_model, gated_convs

    net = create_model("vgg11", gated=True)
    set_tau(net, 0.25)
    assert {g.tau for g in gated_convs(net)} == {0.25}


def test_noise_free_training_takes_the_argmax_and_still_passes_gradients():
    layer = _layer().train()
    set_tau(layer, 0.5, noise=False)
    decisions = []
    layer(torch.rand(16, 3, 8, 8), decisions).sum().backward()
    d = decisions[0]
    assert torch.equal(d.action, d.logits.argmax(1))
    assert layer.decision.linear.weight.grad.abs().sum() > 0


def test_relaxed_decisions_keep_the_argmax_forward_and_pass_gradients_to_the_input():
    from models import relaxed_decisions

    layer = _layer().eval()
    x = torch.rand(8, 3, 8, 8, requires_grad=True)
    plain = []
    layer(x, plain)
    decision_grad = torch.autograd.grad(plain[0].mask.sum(), x, allow_unused=True)[0]
    assert decision_grad is None, "argmax decisions give the input no gradient through the masks"
    with relaxed_decisions(layer, tau=0.5):
        relaxed = []
        layer(x, relaxed)
        grad = torch.autograd.grad(relaxed[0].mask.sum(), x)[0]
    assert torch.equal(relaxed[0].action, plain[0].action)
    assert torch.equal(relaxed[0].mask, plain[0].mask)
    assert grad.abs().sum() > 0
    assert not layer.relaxed and layer.tau == 1.0, "the context restores the layer"
