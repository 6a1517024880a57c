import pytest
import torch

from models import channels_last, create_model, gated_convs, list_models

SHAPES = {"small_cnn": (1, 28, 28)}


def _shape(name):
    return SHAPES.get(name, (3, 32, 32))


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("gated", [False, True])
def test_every_architecture_builds_and_classifies(name, gated):
    c = _shape(name)[0]
    net = create_model(name, gated=gated, num_classes=7, in_channels=c, num_actions=5).eval()
    logits, decisions = net.decide(torch.rand(3, *_shape(name)))
    assert logits.shape == (3, 7)
    assert len(decisions) == len(gated_convs(net))
    assert (len(decisions) > 0) == gated
    for d, gate in zip(decisions, gated_convs(net)):
        assert d.logits.shape == (3, 5) and d.action.shape == (3,)
        assert torch.equal(d.mask, gate.bank.weight[d.action])


@pytest.mark.parametrize("name", list_models())
def test_gated_networks_leave_the_first_conv_and_the_residual_stream_ungated(name):
    net = create_model(name, gated=True)
    gates = gated_convs(net)
    assert gates, "a gated network has gated layers"
    if "resnet" in name:
        assert not net.stem.gated
        assert all(b.conv1.gated and not b.conv2.gated for b in net.blocks)
    else:
        assert not net.convs[0].gated and all(c.gated for c in net.convs[1:])


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(KeyError, match="resnet20"):
        create_model("resnet21")


def test_list_models_filters_by_pattern():
    assert list_models("resnet*") == ["resnet20", "resnet56"]
    assert {"small_cnn", "vgg11", "vgg16"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_channels_last_keeps_every_architectures_outputs_and_is_undone_after(name):
    net = create_model(name, gated=True, num_classes=7, in_channels=_shape(name)[0], num_actions=5).eval()
    x = torch.rand(4, *_shape(name))
    with torch.no_grad():
        logits, decisions = net.decide(x)
        with channels_last(net) as same:
            assert same is net
            assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                       for w in net.parameters() if w.dim() == 4 and w.shape[1] > 1 and w.shape[2] > 1)
            logits_cl, decisions_cl = net.decide(x)
    torch.testing.assert_close(logits_cl, logits, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a.action, b.action) for a, b in zip(decisions, decisions_cl))
    assert all(w.is_contiguous() for w in net.parameters())
    with pytest.raises(RuntimeError), channels_last(net):
        raise RuntimeError("the layout is restored on the way out")
    assert all(w.is_contiguous() for w in net.parameters())
