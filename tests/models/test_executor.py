"""The dynamic executor skips switched-off channels and still computes the masked network."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from models import create_model, gated_convs, list_models, load_run
from models.executor import DynamicExecutor

from conftest import DEFAULT_RUN


def _sparse(model):
    """Masks with many exact zeros (as training leaves them), varied per action."""
    with torch.no_grad():
        for g in gated_convs(model):
            g.bank.weight.uniform_(0, 2)
            g.bank.weight[torch.rand_like(g.bank.weight) < 0.6] = 0
            g.bank.weight[0] = 0  # an action that switches the whole layer off
    return model.eval()


def test_equals_the_masked_shipped_model_on_its_test_images_one_by_one_and_batched():
    from analysis import load_dataset

    run = load_run(DEFAULT_RUN)
    x, _ = next(iter(DataLoader(load_dataset("mnist5k", "test").dataset, batch_size=1000)))
    fast = DynamicExecutor(run.model)
    with torch.no_grad():
        masked = run.model(x)
        one_by_one = torch.cat([fast(x[i:i + 1]) for i in range(len(x))])
        batched = fast(x)
    assert (masked - one_by_one).abs().max() <= 1e-4
    assert (masked - batched).abs().max() <= 1e-4


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "contiguous"])
@pytest.mark.parametrize("arch", [a for a in list_models() if not a.endswith(("56", "19"))])  # the larger: same code
def test_equals_the_masked_network_with_sparse_masks_and_dead_actions(arch, channels_last):
    shape = (1, 28, 28) if arch == "small_cnn" else (3, 32, 32)
    model = _sparse(create_model(arch, gated=True, num_classes=10, in_channels=shape[0], num_actions=4))
    for m in model.modules():  # non-trivial BN statistics, so scale and shift matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(48, *shape)
    fast = DynamicExecutor(model, channels_last=channels_last)
    with torch.no_grad():
        _, decisions = model.decide(x)
        gated_convs(model)[0].bank.weight[decisions[0].action.mode().values] = 0  # the first gate's favourite: off
        logits, decisions = model.decide(x)
        off = [i for i in range(len(x)) if any(bool((d.mask[i] == 0).all()) for d in decisions)]
        assert off, "some inputs switch a whole layer off"
        torch.testing.assert_close(fast(x), logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(torch.cat([fast(x[i:i + 1]) for i in range(8)]), logits[:8], rtol=0, atol=1e-4)
        dead = off[0]
        torch.testing.assert_close(fast(x[dead:dead + 1]), logits[dead:dead + 1], rtol=0, atol=1e-4)  # a layer off


@pytest.mark.parametrize("arch, shape", [("small_cnn", (1, 28, 28)), ("resnet20", (3, 32, 32))])
def test_it_really_computes_fewer_channels(arch, shape):
    """Count the multiply-accumulates of the convs it runs: they equal the counted dynamic MACs
    (at batch size 1; in a batch, the union of the inputs' channels)."""
    from models import active_channels, cost_model

    model = _sparse(create_model(arch, gated=True, num_classes=10, in_channels=shape[0], num_actions=4))
    x = torch.rand(1, *shape)
    done = []
    real_conv = torch.nn.functional.conv2d

    def counting_conv(inp, weight, bias=None, stride=1, padding=0, *args):
        out = real_conv(inp, weight, bias, stride, padding, *args)
        done.append(out.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3])
        return out

    fast = DynamicExecutor(model)
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "conv2d", counting_conv)
        fast(x)
    with torch.no_grad():
        _, decisions = model.decide(x)
    costs = cost_model(model, shape)
    counted = costs.dynamic_macs(active_channels(decisions)).item()
    decision_and_fc = counted - sum(done)
    assert sum(done) < costs.ungated_macs * 0.9  # channels were skipped, not multiplied by zero
    assert 0 <= decision_and_fc <= 0.02 * counted  # what remains is the decision units and the classifier


def test_other_architectures_are_refused_with_a_message():
    with pytest.raises(TypeError, match=r"chains of convs \(small_cnn, vgg\*\) and ResNets; got Sequential"):
        DynamicExecutor(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))
