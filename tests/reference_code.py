"""A minimal re-implementation of the papers' CIFAR networks, written from the papers and the
description in issue 13 (not imported from gatescope), whose ``state_dict`` has the released
code's key layout. Per layer: conv -> BN -> multiply by the selected mask row (dynamic pruning)
or by the learned gates (pruning from scratch) -> ReLU; at inference the decision head takes the
argmax of softmax(fc1(avgpool(relu(x)))), where x is the layer's (VGG) or block's (ResNet) input.
Inputs are normalised by the caller, as the reference's data loader does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VGG = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class DecisionHead(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int):
        super().__init__()
        self.fc1 = nn.Linear(c_in, k, bias=False)
        self.channel_gates = nn.Parameter(torch.ones(k, c_out))

    def forward(self, x):
        probs = F.softmax(self.fc1(F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1)), dim=1)
        action = probs.max(1)[1]
        return action, self.channel_gates[action]


class ConvBNReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, mode: str, k: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.mode = mode
        if mode == "dynamic":
            self.decision_head = DecisionHead(c_in, c_out, k)  # built for the first conv too, never used there
        else:
            self.gates = nn.Parameter(torch.ones(c_out))

    def forward(self, x, actions):
        out = self.bn(self.conv(x))
        if self.mode == "gates":
            out = out * self.gates.view(1, -1, 1, 1)
        elif self.conv.in_channels > 3:
            action, mask = self.decision_head(x)
            actions.append(action)
            out = out * mask[:, :, None, None]
        return F.relu(out)


class CifarVGG(nn.Module):
    def __init__(self, depth: int, mode: str = "dynamic", k: int = 40, num_classes: int = 10, cfg=None):
        super().__init__()
        layers, c_in = [], 3
        for v in cfg or VGG[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(ConvBNReLU(c_in, v, mode, k))
                c_in = v
        self.feature = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        actions = []
        for layer in self.feature:
            x = layer(x, actions) if isinstance(layer, ConvBNReLU) else layer(x)
        x = nn.AvgPool2d(2)(x).view(x.size(0), -1)
        return self.classifier(x), actions


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, planes: int, stride: int, mode: str, k: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        self.mode = mode
        if mode == "dynamic":
            self.decision_head = DecisionHead(c_in, planes, k)
        else:
            self.gates = nn.Parameter(torch.ones(planes))

    def forward(self, x, actions):
        out = self.bn1(self.conv1(x))
        if self.mode == "dynamic":
            action, mask = self.decision_head(x)  # reads the block input
            actions.append(action)
            out = out * mask[:, :, None, None]
        else:
            out = out * self.gates.view(1, -1, 1, 1)
        out = self.bn2(self.conv2(F.relu(out)))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, mode: str = "dynamic", k: int = 40, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        c_in = 16
        for s, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(c_in, planes, 2 if s > 1 and b == 0 else 1, mode, k))
                c_in = planes
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        actions = []
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                out = block(out, actions)
        out = nn.AvgPool2d(8)(out).view(out.size(0), -1)
        return self.linear(out), actions


def reference(arch: str, mode: str = "dynamic", k: int = 40, cfg=None) -> nn.Module:
    """The reference network ``arch`` ("vgg16", "vgg19", "resnet20", "resnet56") with random
    weights, BN statistics, masks (some entries exactly 0) or gates, in eval mode."""
    g = torch.Generator().manual_seed(sum(map(ord, arch + mode)))
    net = CifarVGG(int(arch[3:]), mode, k, cfg=cfg) if arch.startswith("vgg") else CifarResNet(int(arch[6:]), mode, k)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("channel_gates"):
                t.copy_((torch.rand(t.shape, generator=g) * 2.5 - 0.5).clamp(0, 5))  # about 1 in 5 entries 0
            elif name.endswith("gates"):
                t.copy_(torch.rand(t.shape, generator=g))
            elif name.endswith("fc1.weight"):
                t.copy_(F.normalize(torch.randn(t.shape, generator=g), dim=1))
            elif name.endswith(".weight") and t.dim() == 1:  # BN scale below 1: 56 residual layers stay O(1)
                t.copy_(torch.rand(t.shape, generator=g) * 0.4 + 0.3)
            elif name.endswith(("running_mean", ".bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:  # conv and linear weights: He-style scale keeps activations O(1) through 56 layers
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return net.eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` pixel-space images that differ in colour and contrast as well as in noise, so that
    the decision heads do not all pick the same action."""
    g = torch.Generator().manual_seed(seed)
    colour, contrast = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 1, 1, 1, generator=g)
    return (colour + contrast * (torch.rand(n, 3, 32, 32, generator=g) - 0.5)).clamp(0, 1)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """What the reference's data loader does to pixel-space images."""
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
