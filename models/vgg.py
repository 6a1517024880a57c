"""CIFAR-style VGG with BatchNorm; every conv but the first can be gated."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gates import Decision, GatedConv
from .network import Link, Network
from .registry import register_model
from .small_cnn import _chain_links

# conv widths; "M" is a 2x2 max-pool (32x32 -> 1x1 after five pools)
_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class VGG(Network):
    def __init__(
        self,
        config: tuple,
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
        for item in config:
            if item == "M":
                pools[-1] = True
                continue
            convs.append(GatedConv(c_in, item, gated=gated and bool(convs), num_actions=num_actions))
            pools.append(False)
            c_in = item
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


def _builder(name: str):
    def build(
        *,
        gated: bool = True,
        num_classes: int = 10,
        in_channels: int = 3,
        num_actions: int = 40,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> VGG:
        return VGG(
            _CONFIGS[name], gated=gated, num_classes=num_classes, in_channels=in_channels,
            num_actions=num_actions, mean=mean, std=std,
        )

    build.__doc__ = f"CIFAR-style {name} with BatchNorm and a single linear classifier."
    return register_model(name)(build)


vgg11 = _builder("vgg11")
vgg16 = _builder("vgg16")
