"""Counted (theoretical) MACs and parameters: static, per input, and for any channel widths.

A channel whose selected mask entry is exactly 0 is skipped on both sides: the conv that
produces it and the layer that consumes it. Everything here is counted, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from .gates import Decision, GatedConv, gated_convs
from .network import Network


@dataclass(frozen=True)
class LayerCost:
    """One conv or linear layer: ``unit_macs * c_in * c_out`` MACs."""

    name: str
    unit_macs: int  # H_out * W_out * k_h * k_w for a conv, 1 for a linear layer
    kernel: int  # k_h * k_w for a conv, 1 for a linear layer (weights per channel pair)
    per_out_params: int  # parameters per output channel besides the weights (BN: 2, bias: 1)
    in_channels: int
    out_channels: int
    in_gate: int | None  # index of the gated layer that switches input channels off per input
    out_gate: int | None  # ... output channels
    in_source: int | None  # index of the prunable layer producing the input channels
    out_source: int | None  # ... the output channels

    @property
    def macs(self) -> int:
        return self.unit_macs * self.in_channels * self.out_channels


@dataclass(frozen=True)
class CostModel:
    """The cost structure of a network at one input shape."""

    layers: tuple[LayerCost, ...]
    decision_macs: int  # all decision units together; paid by every input
    source_widths: tuple[int, ...]  # output width of every prunable layer, in order

    @property
    def ungated_macs(self) -> int:
        """MACs of the same network without decision units and masks."""
        return sum(layer.macs for layer in self.layers)

    @property
    def static_macs(self) -> int:
        """MACs of one forward pass with every channel active (decision units included)."""
        return self.ungated_macs + self.decision_macs

    def dynamic_macs(self, active: list[torch.Tensor]) -> torch.Tensor:
        """Per-input MACs (B,) given the active-channel count (B,) of every gated layer."""
        return self.layer_macs(active).sum(dim=1) + self.decision_macs

    def layer_macs(self, active: list[torch.Tensor]) -> torch.Tensor:
        """Per-input, per-layer MACs (B, layers) given the active channels (B,) of every gated layer
        (decision units not included)."""
        if not active:
            raise ValueError("dynamic MACs need the active channels of at least one gated layer")
        columns = []
        for layer in self.layers:
            c_in = active[layer.in_gate].double() if layer.in_gate is not None else float(layer.in_channels)
            c_out = active[layer.out_gate].double() if layer.out_gate is not None else float(layer.out_channels)
            columns.append(torch.as_tensor(layer.unit_macs * c_in * c_out, dtype=torch.float64).expand(active[0].shape))
        return torch.stack(columns, dim=1)

    @cached_property
    def _arrays(self) -> dict[str, np.ndarray]:
        """Vectorised layer table for the width-based counts (built once)."""
        def idx(v):
            return -1 if v is None else v
        return {
            "unit": np.array([l.unit_macs for l in self.layers], dtype=np.float64),
            "kernel": np.array([l.kernel for l in self.layers], dtype=np.float64),
            "extra": np.array([l.per_out_params for l in self.layers], dtype=np.float64),
            "c_in": np.array([l.in_channels for l in self.layers], dtype=np.float64),
            "c_out": np.array([l.out_channels for l in self.layers], dtype=np.float64),
            "in_src": np.array([idx(l.in_source) for l in self.layers]),
            "out_src": np.array([idx(l.out_source) for l in self.layers]),
        }

    def _widths_of(self, widths) -> tuple[np.ndarray, np.ndarray]:
        a = self._arrays
        w = np.append(np.asarray(widths, dtype=np.float64), 0.0)  # index -1 -> unused slot
        c_in = np.where(a["in_src"] >= 0, w[a["in_src"]], a["c_in"])
        c_out = np.where(a["out_src"] >= 0, w[a["out_src"]], a["c_out"])
        return c_in, c_out

    def macs_for_widths(self, widths) -> float:
        """MACs of the same architecture with the prunable layers at ``widths`` (no gates)."""
        c_in, c_out = self._widths_of(widths)
        return float((self._arrays["unit"] * c_in * c_out).sum())

    def params_for_widths(self, widths) -> float:
        """Parameters of conv/linear layers and their BN or bias at ``widths``."""
        c_in, c_out = self._widths_of(widths)
        a = self._arrays
        return float((a["kernel"] * c_in * c_out + a["extra"] * c_out).sum())


def active_channels(decisions: list[Decision]) -> list[torch.Tensor]:
    """Per gated layer, the number (B,) of channels whose selected mask entry is non-zero."""
    return [(d.mask != 0).sum(dim=1) for d in decisions]


def prunable_convs(model: Network) -> list[GatedConv]:
    """The layers whose output channels pruning may remove, in forward order."""
    seen: dict[int, GatedConv] = {}
    for link in model.links():
        for src in (link.in_source, link.out_source):
            if src is not None:
                seen.setdefault(id(src), src)
    return list(seen.values())


def cost_model(model: Network, input_shape: tuple[int, int, int]) -> CostModel:
    """Trace one forward pass at ``input_shape`` (C, H, W) and describe every layer's cost."""
    gate_index = {id(g): i for i, g in enumerate(gated_convs(model))}
    sources = prunable_convs(model)
    source_index = {id(s): i for i, s in enumerate(sources)}
    links = model.links()
    shapes: dict[int, torch.Size] = {}
    hooks = [
        link.module.register_forward_hook(lambda m, i, o: shapes.__setitem__(id(m), o.shape))
        for link in links
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=model.mean.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    def gate(src):
        return gate_index.get(id(src)) if src is not None else None

    def source(src):
        return source_index[id(src)] if src is not None else None

    layers = []
    for link in links:
        m = link.module
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise ValueError(f"{link.name}: grouped convolutions are not supported")
            h, w = shapes[id(m)][2:]
            kernel = m.kernel_size[0] * m.kernel_size[1]
            unit, c_in, c_out, extra = h * w * kernel, m.in_channels, m.out_channels, 2 + (m.bias is not None)
        else:
            kernel, unit, c_in, c_out, extra = 1, 1, m.in_features, m.out_features, int(m.bias is not None)
        layers.append(LayerCost(
            name=link.name, unit_macs=unit, kernel=kernel, per_out_params=extra, in_channels=c_in,
            out_channels=c_out, in_gate=gate(link.in_source), out_gate=gate(link.out_source),
            in_source=source(link.in_source), out_source=source(link.out_source),
        ))
    decision = sum(g.decision.linear.in_features * g.decision.linear.out_features for g in gated_convs(model))
    return CostModel(layers=tuple(layers), decision_macs=decision,
                     source_widths=tuple(s.conv.out_channels for s in sources))
