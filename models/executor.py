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

    def __init__(self, model: ConvChain, *, cache_size: int = 4096, min_group: int = 8):
        if not isinstance(model, ConvChain):
            raise TypeError(f"DynamicExecutor runs chains of convs (small_cnn, vgg*); got {type(model).__name__}")
        self.model = model.eval()
        self._layers = [_Layer(conv) for conv in model.convs]
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cache_size = cache_size
        self.min_group = min_group  # smaller groups on average: one masked conv over the union instead

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
        """A batch: per gated layer, one conv per group of inputs that chose the same action, or,
        when the groups are small (more than one per ``min_group`` inputs), one conv over the
        channels that any input needs, masked per input."""
        h = (x - self.model.mean) / self.model.std
        active = torch.ones(len(x), h.shape[1], dtype=torch.bool, device=h.device)  # channels that may be non-zero
        for i, (layer, pool) in enumerate(zip(self._layers, self.model._pools)):
            actions = layer.actions(h)
            present = None if actions is None else torch.unique(actions)
            if present is not None and len(present) > max(1, len(x) // self.min_group):
                h, active = self._union(i, layer, h, active, actions)
                if pool:
                    h = _pool(h)
                continue
            out = h.new_zeros(len(x), layer.out_channels, *_conv_size(h.shape[2:], layer.stride))
            out_active = torch.zeros(len(x), layer.out_channels, dtype=torch.bool, device=h.device)
            for rows, action in layer.groups(actions, present, len(x)):
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

    def _union(self, i: int, layer: "_Layer", h: torch.Tensor, active: torch.Tensor, actions: torch.Tensor):
        """One conv for the whole batch over the union of the channels its inputs use; each
        input's own mask (with BN's scale and shift) applied after."""
        masks = layer.bank.weight.detach()[actions]  # (B, C_out)
        used_in, used_out = active.any(0), (masks != 0).any(0)
        if bool(used_in.all()) and bool(used_out.all()):  # nothing to skip: no gather, no scatter
            y = F.conv2d(h, layer.weight, stride=layer.stride, padding=1)
            return F.relu(y * (layer._scale * masks)[:, :, None, None] + (layer._shift * masks)[:, :, None, None]), masks != 0
        in_ch, out_ch = used_in.nonzero().flatten(), used_out.nonzero().flatten()
        key = ("union", i, hash(used_in.cpu().numpy().tobytes()), hash(used_out.cpu().numpy().tobytes()))
        weight = self._cached(key, lambda: layer.weight.index_select(0, out_ch).index_select(1, in_ch).contiguous())
        m = masks[:, out_ch]
        scale, shift = (layer._scale[out_ch] * m)[:, :, None, None], (layer._shift[out_ch] * m)[:, :, None, None]
        out = h.new_zeros(len(h), layer.out_channels, *_conv_size(h.shape[2:], layer.stride))
        if in_ch.numel() and out_ch.numel():
            out[:, out_ch] = F.conv2d(h[:, in_ch], weight, stride=layer.stride, padding=1) * scale + shift
        elif out_ch.numel():
            out[:, out_ch] = shift.expand(-1, -1, *out.shape[2:])
        return F.relu(out), masks != 0

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

    def actions(self, h: torch.Tensor) -> torch.Tensor | None:
        """The action each input of ``h`` (this layer's input) chooses; None if ungated."""
        return None if self.bank is None else self.decision(h).argmax(dim=1)

    def groups(self, actions: torch.Tensor | None, present: torch.Tensor | None, n: int):
        """(rows, action) per group of inputs that chose the same action (one group if ungated);
        ``present``: the distinct actions."""
        rows = torch.arange(n)
        if actions is None:
            return [(rows, None)]
        return [(rows[actions == a], int(a)) for a in present]

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
