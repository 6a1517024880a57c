"""A dynamic network executed the way its MACs are counted: switched-off channels are skipped.

The masked network (``Network.forward``) computes every channel and multiplies the ones its
mask switches off by 0; the counted MACs (``models.macs``) assume they are never computed.
:class:`DynamicExecutor` makes that real for chains of convs (``small_cnn``, the VGGs): per
gated layer it groups the inputs of a batch by the action they chose, and for each group runs
the conv on the channels it needs only: the output channels whose selected mask entry is
non-zero, read from the input channels that some member of the group has active. At batch size
1 every layer is one group, so the skipped channels are skipped outright; at larger batches
groups are smaller and the savings compete with the cost of more, smaller convolutions (the
benchmark ``benchmarks/dynamic_speed.py`` measures both).

Its outputs equal the masked network's in eval mode (tested to 1e-4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .chain import ConvChain
from .gates import GatedConv


class DynamicExecutor:
    """``DynamicExecutor(model)(x) -> logits`` for an eval-mode :class:`~models.chain.ConvChain`.

    >>> fast = DynamicExecutor(load_run("assets/mnist5k/dynamic").model)
    >>> logits = fast(images)
    """

    def __init__(self, model: ConvChain, *, cache_size: int = 4096):
        if not isinstance(model, ConvChain):
            raise TypeError(f"DynamicExecutor runs chains of convs (small_cnn, vgg*); got {type(model).__name__}")
        self.model = model.eval()
        self._layers = [_Layer(conv) for conv in model.convs]
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cache_size = cache_size

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._one(x) if len(x) == 1 else self._grouped(x)

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        """One input: the activations hold its active channels only, nothing is scattered."""
        h = (x - self.model.mean) / self.model.std
        in_ch, prev = None, "all"  # None: every channel of h is present
        for i, (layer, pool) in enumerate(zip(self._layers, self.model._pools)):
            action = None
            if layer.bank is not None:
                pooled = h.mean(dim=(2, 3))  # h is post-ReLU already
                if in_ch is not None:
                    pooled = pooled.new_zeros(1, layer.in_channels).index_copy_(1, in_ch, pooled)
                action = int(layer.decision(pooled[:, :, None, None]).argmax())
            out_ch = layer.outputs(action)[0]
            weight, bias = self._folded(("one", i, prev, action), layer, action, in_ch)
            h = F.relu(_conv(h, weight, bias, layer.stride))
            if pool:
                h = _pool(h)
            in_ch, prev = out_ch, action
        fc = self.model.fc
        weight = self._cached(("fc", prev), lambda: fc.weight.index_select(1, in_ch).contiguous())
        return F.linear(h.mean(dim=(2, 3)), weight, fc.bias)

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """A batch: per gated layer, one conv per group of inputs that chose the same action."""
        h = (x - self.model.mean) / self.model.std
        active = torch.ones(len(x), h.shape[1], dtype=torch.bool, device=h.device)  # channels that may be non-zero
        for i, (layer, pool) in enumerate(zip(self._layers, self.model._pools)):
            out = h.new_zeros(len(x), layer.out_channels, *_conv_size(h.shape[2:], layer.stride))
            out_active = torch.zeros(len(x), layer.out_channels, dtype=torch.bool, device=h.device)
            for rows, action in layer.groups(h):
                in_ch = active[rows].any(0).nonzero().flatten()
                out_ch = layer.outputs(action)[0]
                key = ("group", i, action, in_ch.numel(), hash(in_ch.cpu().numpy().tobytes()))
                weight, bias = self._folded(key, layer, action, in_ch)
                out[rows[:, None], out_ch] = _conv(h[rows][:, in_ch], weight, bias, layer.stride)
                out_active[rows[:, None], out_ch] = True
            h, active = F.relu(out), out_active
            if pool:
                h = _pool(h)
        return self.model.fc(h.mean(dim=(2, 3)))

    def _folded(self, key: tuple, layer: "_Layer", action: int | None, in_ch: torch.Tensor | None):
        """Conv weight and bias restricted to the action's output channels and the input channels
        ``in_ch`` (None: all), with BN, channel gate and mask folded in (cached)."""
        def make():
            out_ch, scale, shift = layer.outputs(action)
            weight = layer.weight.index_select(0, out_ch)
            if in_ch is not None:
                weight = weight.index_select(1, in_ch)
            return (weight * scale[:, None, None, None]).contiguous(), shift.contiguous()

        return self._cached(key, make)

    def _cached(self, key: tuple, make):
        value = self._cache.get(key)
        if value is None:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))  # oldest first
            value = self._cache[key] = make()
        return value


class _Layer:
    """One conv + BN (+ channel gate) (+ mask bank) in the form the executor needs."""

    def __init__(self, conv: GatedConv):
        bn = conv.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        if conv.gate is not None:
            scale, shift = scale * conv.gate, shift * conv.gate
        self.weight = conv.conv.weight.detach()
        self.stride = conv.conv.stride[0]
        self.out_channels, self.in_channels = self.weight.shape[:2]
        self.decision, self.bank = conv.decision, conv.bank
        self._all = torch.arange(self.out_channels, device=self.weight.device)
        self._scale, self._shift = scale.detach(), shift.detach()
        if self.bank is not None:  # per action: active output channels and their scale and shift
            bank = self.bank.weight.detach()
            self._per_action = []
            for row in bank:
                ch = row.nonzero().flatten()
                self._per_action.append((ch, self._scale[ch] * row[ch], self._shift[ch] * row[ch]))

    def groups(self, h: torch.Tensor):
        """(rows, action) per group of inputs that chose the same action (one group if ungated)."""
        rows = torch.arange(len(h), device=h.device)
        if self.bank is None:
            return [(rows, None)]
        actions = self.decision(h).argmax(dim=1)
        return [(rows[actions == a], int(a)) for a in torch.unique(actions)]

    def outputs(self, action: int | None):
        if action is None:
            return self._all, self._scale, self._shift
        return self._per_action[action]


def _conv(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
    """3x3 conv, padding 1; with no input or no output channel left, just the bias."""
    if weight.shape[0] and weight.shape[1]:
        return F.conv2d(h, weight, bias, stride=stride, padding=1)
    return bias[None, :, None, None].expand(len(h), -1, *_conv_size(h.shape[2:], stride)).clone()


def _pool(h: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool (which refuses tensors with no channel)."""
    if h.shape[1]:
        return F.max_pool2d(h, 2)
    return h.new_zeros(len(h), 0, h.shape[2] // 2, h.shape[3] // 2)


def _conv_size(size: torch.Size, stride: int) -> tuple[int, int]:
    return tuple((s + 2 - 3) // stride + 1 for s in size)
