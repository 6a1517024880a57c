"""CIFAR-style ResNet (He et al. 2016, 6n+2 layers); only block-internal channels are gated."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .gates import Decision, GatedConv
from .network import Link, Network, check_widths
from .registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs; the gate sits on conv1's output, never on the residual stream."""

    def __init__(self, c_in: int, width: int, c_out: int, stride: int, *, gated: bool, num_actions: int,
                 channel_gate: bool, standardise: bool):
        super().__init__()
        self.conv1 = GatedConv(c_in, width, stride=stride, gated=gated, num_actions=num_actions,
                               channel_gate=channel_gate, standardise=standardise)
        self.conv2 = GatedConv(width, c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor, decisions: list[Decision] | None) -> torch.Tensor:
        h = F.relu(self.conv1(x, decisions))
        h = self.conv2(h)
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(h + skip)


class ResNet(Network):
    def __init__(
        self,
        depth: int,
        *,
        gated: bool = True,
        num_classes: int = 10,
        in_channels: int = 3,
        num_actions: int = 40,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        widths: list[int] | None = None,
        channel_gates: bool = False,
        standardise: bool = True,  # decision units standardise pooled features (False: the papers' unit)
    ):
        super().__init__(in_channels=in_channels, mean=mean, std=std)
        n = (depth - 2) // 6
        stages = [c for c in (16, 32, 64) for _ in range(n)]
        widths = check_widths(widths, stages)  # block-internal widths; the residual stream keeps its own
        self.stem = GatedConv(in_channels, 16)
        blocks, c_in = [], 16
        for i, c_out in enumerate(stages):
            stride = 2 if i > 0 and c_out != stages[i - 1] else 1
            blocks.append(BasicBlock(c_in, widths[i], c_out, stride, gated=gated, num_actions=num_actions,
                                     channel_gate=channel_gates, standardise=standardise))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(c_in, num_classes)

    def body(self, x: torch.Tensor, decisions: list[Decision] | None) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = block(x, decisions)
        return self.fc(x.mean(dim=(2, 3)))

    def links(self) -> list[Link]:
        links = [Link("stem.conv", self.stem.conv, None, None)]
        for i, block in enumerate(self.blocks):
            links.append(Link(f"blocks.{i}.conv1.conv", block.conv1.conv, None, block.conv1))
            links.append(Link(f"blocks.{i}.conv2.conv", block.conv2.conv, block.conv1, None))
            if block.shortcut is not None:
                links.append(Link(f"blocks.{i}.shortcut.0", block.shortcut[0], None, None))
        links.append(Link("fc", self.fc, None, None))
        return links


register_model("resnet20")(partial(ResNet, 20))
register_model("resnet56")(partial(ResNet, 56))
