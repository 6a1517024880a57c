"""The default: a five-conv CNN for 28x28 grayscale images, every conv but the first gated."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gates import Decision, GatedConv
from .network import Link, Network
from .registry import register_model

# (out_channels, max-pool after) per conv: 28x28 -> 14x14 -> 7x7 -> global average pool
_LAYOUT = ((16, True), (32, False), (64, True), (64, False), (128, False))


class SmallCNN(Network):
    def __init__(
        self,
        *,
        gated: bool,
        num_classes: int,
        in_channels: int,
        num_actions: int,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
    ):
        super().__init__(in_channels=in_channels, mean=mean, std=std)
        convs, pools, c_in = [], [], in_channels
        for i, (c_out, pool) in enumerate(_LAYOUT):
            convs.append(GatedConv(c_in, c_out, gated=gated and i > 0, num_actions=num_actions))
            pools.append(pool)
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self._pools = pools
        self.fc = nn.Linear(c_in, num_classes)

    def body(self, x: torch.Tensor, decisions: list[Decision] | None) -> torch.Tensor:
        for conv, pool in zip(self.convs, self._pools):
            x = F.relu(conv(x, decisions))
            if pool:
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean(dim=(2, 3)))

    def links(self) -> list[Link]:
        return _chain_links(self.convs, self.fc)


def _chain_links(convs: nn.ModuleList, fc: nn.Linear) -> list[Link]:
    """Links of a plain chain of gated convs followed by a linear classifier."""
    links, prev = [], None
    for i, conv in enumerate(convs):
        gate = conv if conv.gated else None
        links.append(Link(f"convs.{i}.conv", conv.conv, prev, gate))
        prev = gate
    links.append(Link("fc", fc, prev, None))
    return links


@register_model("small_cnn")
def small_cnn(
    *,
    gated: bool = True,
    num_classes: int = 10,
    in_channels: int = 1,
    num_actions: int = 40,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> SmallCNN:
    """Five 3x3 convs (16-128 channels) for 28x28 inputs; about 10M MACs ungated."""
    return SmallCNN(
        gated=gated, num_classes=num_classes, in_channels=in_channels,
        num_actions=num_actions, mean=mean, std=std,
    )
