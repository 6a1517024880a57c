"""Plain chains of 3x3 convs with max-pools, global average pooling and one linear layer:
the default ``small_cnn`` (28x28 grayscale), a 7-conv CIFAR VGG small enough to train on a CPU,
and CIFAR-style VGG-11/16 with BatchNorm.
Every conv but the first can be gated."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .gates import Decision, GatedConv
from .network import Link, Network, check_widths
from .registry import register_model

# conv widths; "M" is a 2x2 max-pool after the conv before it
SMALL_CNN = (16, "M", 32, 64, "M", 64, 128)  # 28x28 -> 14x14 -> 7x7, about 10M MACs
VGG7 = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256)  # CIFAR-size, about 36M MACs: trains on a CPU
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class ConvChain(Network):
    def __init__(
        self,
        config: tuple,
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
        default = [c for c in config if c != "M"]
        widths = check_widths(widths, default)
        convs, pools, c_in = [], [], in_channels
        for item in config:
            if item == "M":
                pools[-1] = True
                continue
            c_out = widths[len(convs)]
            convs.append(GatedConv(c_in, c_out, gated=gated and bool(convs), num_actions=num_actions,
                                   channel_gate=channel_gates, standardise=standardise))
            pools.append(False)
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
        links, prev = [], None
        for i, conv in enumerate(self.convs):
            links.append(Link(f"convs.{i}.conv", conv.conv, prev, conv))
            prev = conv
        links.append(Link("fc", self.fc, prev, None))
        return links


register_model("small_cnn")(partial(ConvChain, SMALL_CNN, in_channels=1))
register_model("vgg7")(partial(ConvChain, VGG7))
register_model("vgg11")(partial(ConvChain, VGG11))
register_model("vgg16")(partial(ConvChain, VGG16))
