"""Dynamic channel gating: decision units, mask banks and the gated conv they drive.

A gated layer looks at its *input*, picks one of K learned channel masks and multiplies the
chosen mask into its conv's output after BatchNorm, before the nonlinearity. A mask entry that
is exactly 0 switches that channel off for that input (see ``models.macs``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MASK_MAX = 5.0  # mask entries are clamped to [0, MASK_MAX] after every update


@dataclass
class Decision:
    """What one gated layer decided for a batch."""

    logits: torch.Tensor  # (B, K) decision-unit outputs
    action: torch.Tensor  # (B,) chosen mask index
    mask: torch.Tensor  # (B, C_out) chosen mask rows

    @property
    def log_probs(self) -> torch.Tensor:
        """(B, K) log action probabilities."""
        return F.log_softmax(self.logits, dim=1)


class DecisionUnit(nn.Module):
    """ReLU -> global average pool -> standardise -> bias-free linear C_in -> K, unit-norm rows.

    The pooled features of different inputs share a large common part; standardising them
    (BatchNorm without affine terms, running statistics at inference) leaves the part that
    varies between inputs, so that unit-norm rows can still give logits far enough apart for
    the choice to depend on the input rather than on the Gumbel noise. ``standardise=False`` is
    the papers' reference unit (no standardisation, no state besides the linear map), so that
    checkpoints trained by their code load exactly.
    """

    def __init__(self, in_channels: int, num_actions: int, *, standardise: bool = True):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_channels, affine=False) if standardise else nn.Identity()
        self.linear = nn.Linear(in_channels, num_actions, bias=False)
        if not self.linear.weight.is_meta:  # built on "meta" only to read its shapes (models.schema): on that
            nn.init.normal_(self.linear.weight)  # device these ops would import torch._dynamo (1.5 s) for nothing
            self.constrain_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(x).mean(dim=(2, 3))  # (B, C_in)
        return self.linear(self.norm(pooled))  # (B, K) logits

    @torch.no_grad()
    def constrain_(self) -> None:
        """Project every row back onto the unit sphere (called after each optimiser step)."""
        w = self.linear.weight
        w.copy_(F.normalize(w, dim=1))


class MaskBank(nn.Module):
    """K learned channel masks over C_out channels, initialised to 1."""

    def __init__(self, num_actions: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_actions, channels))

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        return one_hot @ self.weight  # (B, K) x (K, C) -> (B, C)

    @torch.no_grad()
    def constrain_(self) -> None:
        self.weight.clamp_(0.0, MASK_MAX)


class GatedConv(nn.Module):
    """Conv -> BN -> (per-input mask) with an optional decision unit.

    Ungated, it is a plain conv + BN. Gated, ``forward`` also appends a :class:`Decision` to
    the ``decisions`` list it is given. In training it samples a hard Gumbel-softmax action
    (straight-through gradients); in eval it takes the argmax, with no noise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        gated: bool = False,
        num_actions: int = 40,
        channel_gate: bool = False,
        standardise: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.tau = 1.0  # Gumbel-softmax temperature, set by the trainer (not a parameter)
        self.noise = True  # training samples with Gumbel noise; False: argmax, as at inference
        self.relaxed = False  # eval: argmax forward with softmax gradients (for adaptive attacks)
        self.forced: int | None = None  # eval: take this action whatever the unit says (counterfactuals)
        # pruning from scratch: one scalar gate per output channel, in [0, 1], initialised to 1
        self.gate = nn.Parameter(torch.ones(out_channels)) if channel_gate else None
        if gated:
            self.decision = DecisionUnit(in_channels, num_actions, standardise=standardise)
            self.bank = MaskBank(num_actions, out_channels)
        else:
            self.decision = None
            self.bank = None

    @property
    def gated(self) -> bool:
        return self.bank is not None

    def forward(self, x: torch.Tensor, decisions: list[Decision] | None = None) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.gate is not None:
            y = y * self.gate[:, None, None]
        if self.bank is None:
            return y
        logits = self.decision(x)
        if self.training or self.relaxed:
            one_hot = _straight_through(logits, self.tau, noise=self.noise and self.training)
            action = one_hot.argmax(dim=1)
            mask = self.bank(one_hot)
        else:
            action = logits.argmax(dim=1)
            if self.forced is not None:
                action = torch.full_like(action, self.forced)
            mask = self.bank.weight[action]  # indexing, not a matmul: no hidden MACs
        if decisions is not None:
            decisions.append(Decision(logits=logits, action=action, mask=mask))
        return y * mask[:, :, None, None]


def _straight_through(logits: torch.Tensor, tau: float, *, noise: bool) -> torch.Tensor:
    """A one-hot (B, K) action whose gradient is that of softmax(logits (+ Gumbel noise) / tau)."""
    if noise:
        return F.gumbel_softmax(logits, tau=tau, hard=True)
    soft = F.softmax(logits / tau, dim=1)
    hard = F.one_hot(soft.argmax(dim=1), soft.shape[1]).to(soft.dtype)
    return hard - soft.detach() + soft


def gated_convs(model: nn.Module) -> list[GatedConv]:
    """The gated layers of ``model`` in forward order."""
    return [m for m in model.modules() if isinstance(m, GatedConv) and m.gated]


def constrain_(model: nn.Module) -> None:
    """Re-apply the clamps and norms of every decision unit, mask bank and channel gate."""
    for m in model.modules():
        if isinstance(m, (DecisionUnit, MaskBank)):
            m.constrain_()
        elif isinstance(m, GatedConv) and m.gate is not None:
            with torch.no_grad():
                m.gate.clamp_(0.0, 1.0)


@contextmanager
def relaxed_decisions(model: nn.Module, tau: float = 1.0):
    """Within the block, eval-mode decisions keep their argmax forward but pass the gradients of
    softmax(logits / tau) (straight-through, as in training, without Gumbel noise), so an attack
    can differentiate through the choice of masks; the argmax alone has zero gradient."""
    layers = gated_convs(model)
    saved = [(g.relaxed, g.tau) for g in layers]
    for g in layers:
        g.relaxed, g.tau = True, tau
    try:
        yield model
    finally:
        for g, (relaxed, old_tau) in zip(layers, saved):
            g.relaxed, g.tau = relaxed, old_tau


@contextmanager
def forced_actions(model: nn.Module, force: dict[int, int]):
    """Within the block, in eval mode, gated layer ``l`` takes action ``force[l]`` for every input
    (its decision unit still runs, so its probabilities stay observable); the others decide as usual."""
    layers = gated_convs(model)
    for l, a in force.items():
        if not 0 <= l < len(layers):
            raise ValueError(f"gate {l} does not exist; this network has gates 0..{len(layers) - 1}")
        if not 0 <= a < layers[l].bank.weight.shape[0]:
            raise ValueError(f"gate {l} has actions 0..{layers[l].bank.weight.shape[0] - 1}, got {a}")
    try:
        for l, a in force.items():
            layers[l].forced = int(a)
        yield model
    finally:
        for g in layers:
            g.forced = None


def set_tau(model: nn.Module, tau: float, *, noise: bool = True) -> None:
    """Set the Gumbel-softmax temperature of every gated layer, and whether training samples
    with Gumbel noise (``noise=False`` trains on the argmax actions used at inference)."""
    for m in gated_convs(model):
        m.tau = tau
        m.noise = noise
