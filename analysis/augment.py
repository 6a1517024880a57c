"""Batch augmentation on tensors in pixel space (cheap enough to run inside the train loop)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_SHIFT = 2  # pixels, each direction


def augment_batch(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Random integer shifts of up to ``MAX_SHIFT`` pixels (zero fill); ``shift_flip`` also
    mirrors half the images left-right. Uses torch's global generator (seeded by the trainer)."""
    if kind not in ("shift", "shift_flip"):
        raise ValueError(f"augmentation is {kind!r}; expected 'shift' or 'shift_flip'")
    b, _, h, w = x.shape
    padded = F.pad(x, (MAX_SHIFT,) * 4)
    dy = torch.randint(0, 2 * MAX_SHIFT + 1, (b,))
    dx = torch.randint(0, 2 * MAX_SHIFT + 1, (b,))
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # (B, 1, 1, W)
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    if kind == "shift_flip":
        flip = torch.rand(b) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out
