"""The base class every registered architecture derives from."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .gates import Decision, GatedConv


@dataclass(frozen=True)
class Link:
    """A costed layer (conv or linear) and where its input and output channels come from.

    ``in_source`` / ``out_source`` is the :class:`GatedConv` whose output channels this layer
    reads / writes, or ``None`` when those channels can never be switched off (the image, the
    residual stream, the logits). A source that is gated switches channels off per input; every
    source is a place where pruning may remove channels.
    """

    name: str
    module: nn.Module
    in_source: GatedConv | None
    out_source: GatedConv | None


class Network(nn.Module):
    """Normalisation + a body that may contain gated layers.

    ``forward`` takes images in pixel space [0, 1] and returns logits; ``decide`` returns the
    logits and one :class:`Decision` per gated layer, in forward order.
    """

    def __init__(self, *, in_channels: int, mean: tuple[float, ...] | None, std: tuple[float, ...] | None):
        super().__init__()
        mean = list(mean) if mean is not None else [0.0] * in_channels
        std = list(std) if std is not None else [1.0] * in_channels
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean/std need {in_channels} values, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std, None)

    def decide(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Decision]]:
        """Logits (B, classes) and the decisions of every gated layer."""
        decisions: list[Decision] = []
        logits = self.body((x - self.mean) / self.std, decisions)
        return logits, decisions

    def body(self, x: torch.Tensor, decisions: list[Decision] | None) -> torch.Tensor:
        raise NotImplementedError

    def links(self) -> list[Link]:
        """Every conv and linear layer of the body with its input and output gates."""
        raise NotImplementedError


def check_widths(widths: list[int] | None, default: list[int]) -> list[int]:
    """``widths`` (one per prunable layer) checked against the architecture, or ``default``."""
    if widths is None:
        return list(default)
    widths = [int(w) for w in widths]
    if len(widths) != len(default):
        raise ValueError(f"widths has {len(widths)} entries; this architecture has {len(default)} prunable layers")
    if any(w < 1 for w in widths):
        raise ValueError(f"every width must be >= 1, got {widths}")
    return widths


@contextmanager
def channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s 4-D weights are in channels-last layout, so convolutions (and
    what follows them) run channels-last whatever the input's layout: on a CPU oneDNN's kernels are
    then faster (``benchmarks/memory_layout.py``). Same values, so the same results up to float
    rounding; the contiguous layout again after the block."""
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)
