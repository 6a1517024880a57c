"""Counted (theoretical) MACs: static for a whole network, dynamic per input.

A channel whose selected mask entry is exactly 0 is skipped on both sides: the conv that
produces it and the layer that consumes it. Everything here is counted, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .gates import Decision, gated_convs
from .network import Network


@dataclass(frozen=True)
class LayerCost:
    """One conv or linear layer: its MACs are ``unit_macs * c_in * c_out``."""

    name: str
    unit_macs: int  # H_out * W_out * k_h * k_w for a conv, 1 for a linear layer
    in_channels: int
    out_channels: int
    in_gate: int | None  # index of the gated layer masking the input channels
    out_gate: int | None  # index of the gated layer masking the output channels

    @property
    def macs(self) -> int:
        return self.unit_macs * self.in_channels * self.out_channels


@dataclass(frozen=True)
class CostModel:
    """The cost structure of a network at one input shape."""

    layers: tuple[LayerCost, ...]
    decision_macs: int  # all decision units together; paid by every input

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
        if not active:
            raise ValueError("dynamic MACs need the active channels of at least one gated layer")
        total = torch.full(active[0].shape, float(self.decision_macs), dtype=torch.float64)
        for layer in self.layers:
            c_in = active[layer.in_gate].double() if layer.in_gate is not None else layer.in_channels
            c_out = active[layer.out_gate].double() if layer.out_gate is not None else layer.out_channels
            total = total + layer.unit_macs * c_in * c_out
        return total


def active_channels(decisions: list[Decision]) -> list[torch.Tensor]:
    """Per gated layer, the number (B,) of channels whose selected mask entry is non-zero."""
    return [(d.mask != 0).sum(dim=1) for d in decisions]


def cost_model(model: Network, input_shape: tuple[int, int, int]) -> CostModel:
    """Trace one forward pass at ``input_shape`` (C, H, W) and describe every layer's cost."""
    gate_index = {id(g): i for i, g in enumerate(gated_convs(model))}
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

    layers = []
    for link in links:
        m = link.module
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise ValueError(f"{link.name}: grouped convolutions are not supported")
            h, w = shapes[id(m)][2:]
            unit, c_in, c_out = h * w * m.kernel_size[0] * m.kernel_size[1], m.in_channels, m.out_channels
        else:
            unit, c_in, c_out = 1, m.in_features, m.out_features
        layers.append(
            LayerCost(
                name=link.name,
                unit_macs=unit,
                in_channels=c_in,
                out_channels=c_out,
                in_gate=gate_index[id(link.in_gate)] if link.in_gate is not None else None,
                out_gate=gate_index[id(link.out_gate)] if link.out_gate is not None else None,
            )
        )
    decision = sum(g.decision.linear.in_features * g.decision.linear.out_features for g in gated_convs(model))
    return CostModel(layers=tuple(layers), decision_macs=decision)
