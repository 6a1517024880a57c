"""A dynamic network executed the way its MACs are counted: switched-off channels are skipped.

The masked network (``Network.forward``) computes every channel and multiplies the ones its
mask switches off by 0; the counted MACs (``models.macs``) assume they are never computed.
:class:`DynamicExecutor` makes that real for chains of convs (``small_cnn``, the VGGs) and for
ResNets (whose gates sit inside the blocks). Activations are kept *compact*: a gated layer
computes only the output channels that some input of the batch uses (the union of the masks
the inputs chose), and the next conv reads only those input channels. Each input's own mask is
then applied to that union, so an input never sees a channel its mask switches off. At batch
size 1 the union is that input's mask: every switched-off channel is skipped outright; in a
batch, inputs choose different masks and the union grows towards every channel, so the saving
shrinks (``benchmarks/dynamic_speed.py`` measures both). BatchNorm (and a channel gate) is
folded into the conv's weights and bias, and the mask and ReLU are applied in place: that is
what the executor saves over the masked network when nothing can be skipped.

The convs run in the channels-last layout (``channels_last=False``: the contiguous one), which
oneDNN runs faster on CPUs, at batch size 1 too (and max-pooling far faster).

Its outputs equal the masked network's in eval mode (tested to 1e-4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .chain import ConvChain
from .gates import GatedConv
from .resnet import ResNet


class DynamicExecutor:
    """``DynamicExecutor(model)(x) -> logits`` for an eval-mode :class:`~models.chain.ConvChain`
    or :class:`~models.resnet.ResNet`.

    >>> fast = DynamicExecutor(load_run("assets/mnist5k/dynamic").model)
    >>> logits = fast(images)
    """

    def __init__(self, model: ConvChain | ResNet, *, cache_size: int = 4096, channels_last: bool = True):
        if not isinstance(model, (ConvChain, ResNet)):
            raise TypeError(f"DynamicExecutor runs chains of convs (small_cnn, vgg*) and ResNets; "
                            f"got {type(model).__name__}")
        self.model = model.eval()
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cache_size = cache_size
        if isinstance(model, ConvChain):
            self._layers = [_Layer(conv, i) for i, conv in enumerate(model.convs)]
        else:
            self._stem = _Layer(model.stem, "stem")
            self._blocks = [(_Layer(b.conv1, f"{i}.1"), _Layer(b.conv2, f"{i}.2"),
                             None if b.shortcut is None else _Shortcut(b.shortcut)) for i, b in enumerate(model.blocks)]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = ((x - self.model.mean) / self.model.std).contiguous(memory_format=self.layout)
        h, present = self._chain(h) if isinstance(self.model, ConvChain) else self._resnet(h)
        fc = self.model.fc
        weight = fc.weight if present.channels is None else self._cached(
            ("fc", present.key), lambda: fc.weight.index_select(1, present.channels).contiguous())
        return F.linear(h.mean(dim=(2, 3)), weight, fc.bias)

    def _chain(self, h: torch.Tensor) -> tuple[torch.Tensor, "_Channels"]:
        present = _ALL
        for layer, pool in zip(self._layers, self.model._pools):
            h, present = self._gated(layer, h, present)
            h = F.relu_(h)
            if pool:
                h = _pool(h)
        return h, present

    def _resnet(self, h: torch.Tensor) -> tuple[torch.Tensor, "_Channels"]:
        h, _ = self._gated(self._stem, h, _ALL)
        h = F.relu_(h)
        for conv1, conv2, shortcut in self._blocks:  # the residual stream keeps every channel
            mid, present = self._gated(conv1, h, _ALL)
            out, _ = self._gated(conv2, F.relu_(mid), present)
            h = F.relu_(out.add_(h if shortcut is None else shortcut(h)))
        return h, _ALL

    def _gated(self, layer: "_Layer", h: torch.Tensor, present: "_Channels") -> tuple[torch.Tensor, "_Channels"]:
        """``layer`` (conv, folded BN, mask; no ReLU) on ``h``, which holds the input channels
        ``present``. Returns the output over the channels any input of the batch uses, and those."""
        if layer.bank is None:
            weight, bias = self._cached((layer.name, present.key), lambda: layer.folded(present.channels, None, self.layout))
            return _conv(h, weight, bias, layer.stride), _ALL
        unit, bias = self._cached((layer.name, "decision", present.key), lambda: layer.decision_unit(present.channels))
        actions = F.linear(h.mean(dim=(2, 3)), unit, bias).argmax(dim=1)  # h is post-ReLU already
        if len(h) == 1:  # one input: its mask is folded into the weights too
            action = int(actions)
            weight, bias, out = self._cached((layer.name, present.key, action),
                                             lambda: layer.for_action(action, present.channels, self.layout))
            return _conv(h, weight, bias, layer.stride), _Channels(out, (layer.name, action))
        masks = layer.bank.weight.detach()[actions]  # (B, C_out)
        used = (masks != 0).any(0)
        out = _ALL if bool(used.all()) else _Channels.of(used.nonzero().flatten())
        if out.channels is not None:
            masks = masks.index_select(1, out.channels)
        weight, bias = self._cached((layer.name, present.key, out.key),
                                    lambda: layer.folded(present.channels, out.channels, self.layout))
        return _conv(h, weight, bias, layer.stride).mul_(masks[:, :, None, None]), out

    def _cached(self, key: tuple, make):
        value = self._cache.get(key)
        if value is None:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))  # oldest first
            value = self._cache[key] = make()
        return value


class _Channels:
    """The channels an activation holds (``channels`` None: all of them) and a key that names
    that set in the weight cache (the action that chose it, or the set's hash)."""

    def __init__(self, channels: torch.Tensor | None, key):
        self.channels, self.key = channels, key

    @classmethod
    def of(cls, channels: torch.Tensor) -> "_Channels":
        return cls(channels, (channels.numel(), hash(channels.cpu().numpy().tobytes())))


_ALL = _Channels(None, None)


class _Layer:
    """One conv + BN (+ channel gate) (+ decision unit and mask bank) as the executor needs it."""

    def __init__(self, conv: GatedConv, name):
        bn = conv.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        if conv.gate is not None:
            scale, shift = scale * conv.gate, shift * conv.gate
        self.name = name
        self.weight = (conv.conv.weight * scale[:, None, None, None]).detach()  # BN folded in
        self.shift = shift.detach()
        self.stride = conv.conv.stride[0]
        self.decision, self.bank = conv.decision, conv.bank

    def folded(self, inputs: torch.Tensor | None, outputs: torch.Tensor | None, layout) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias restricted to the input and output channels given (None: all)."""
        weight, bias = self.weight, self.shift
        if outputs is not None:
            weight, bias = weight.index_select(0, outputs), bias.index_select(0, outputs)
        if inputs is not None:
            weight = weight.index_select(1, inputs)
        return weight.contiguous(memory_format=layout), bias.contiguous()

    def decision_unit(self, inputs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The decision unit (standardise, then linear) as one linear map of the pooled input
        channels ``inputs`` (None: all): the others are 0, so only the standardisation's shift,
        in the bias, sees them."""
        weight = self.decision.linear.weight.detach()
        bias = weight.new_zeros(len(weight))
        norm = self.decision.norm
        if isinstance(norm, torch.nn.BatchNorm1d):
            weight = weight / torch.sqrt(norm.running_var + norm.eps)
            bias = -(weight @ norm.running_mean)
        if inputs is not None:
            weight = weight.index_select(1, inputs)
        return weight.contiguous(), bias

    def for_action(self, action: int, inputs: torch.Tensor | None, layout):
        """Weight and bias for one input that chose ``action``: its non-zero mask entries only,
        the mask folded in; and those output channels (None: all)."""
        row = self.bank.weight.detach()[action]
        outputs = None if bool((row != 0).all()) else row.nonzero().flatten()
        weight, bias = self.folded(inputs, outputs, layout)
        kept = row if outputs is None else row[outputs]
        return (weight * kept[:, None, None, None]).contiguous(memory_format=layout), bias * kept, outputs


class _Shortcut:
    """A ResNet block's 1x1 conv + BN shortcut, BN folded in."""

    def __init__(self, shortcut: torch.nn.Sequential):
        conv, bn = shortcut
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.weight = (conv.weight * scale[:, None, None, None]).detach()
        self.bias = (bn.bias - bn.running_mean * scale).detach()
        self.stride = conv.stride[0]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, self.weight, self.bias, stride=self.stride)


def _conv(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
    """3x3 conv, padding 1; with no input or no output channel left, just the bias."""
    if weight.shape[0] and weight.shape[1]:
        return F.conv2d(h, weight, bias, stride=stride, padding=1)
    size = tuple((s + 2 - 3) // stride + 1 for s in h.shape[2:])
    return bias[None, :, None, None].expand(len(h), -1, *size).clone()


def _pool(h: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool (which refuses tensors with no channel)."""
    if h.shape[1]:
        return F.max_pool2d(h, 2)
    return h.new_zeros(len(h), 0, h.shape[2] // 2, h.shape[3] // 2)
