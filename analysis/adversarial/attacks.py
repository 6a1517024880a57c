"""Untargeted adversarial attacks by name: ``fgsm``, ``bim``, ``pgd`` (captum's FGSM and PGD),
``deepfool`` and ``cw_l2`` (plain torch), and the *confident* ones that do not stop at the
decision boundary (Tramer et al. 2020): ``cw_l2_k10`` and ``cw_l2_k20`` (Carlini-Wagner with
confidence kappa 10 and 20) and ``pgd_margin`` (PGD on the logit margin, up to a target margin).

Every attack has one calling convention: build it with the model and its options, call it on a
batch of images in pixel space [0, 1] and their true labels.

>>> attack = create_attack("pgd", model, **default_params("pgd", "mnist"))
>>> result = attack(x, y)            # x (B, C, H, W) in [0, 1], y (B,) true labels
>>> result.success.float().mean()    # fraction of the batch whose prediction flipped

L-inf budgets are in pixel units and every adversarial input is clamped to [0, 1]. An attack
uses the model as it finds it: it never switches train/eval mode and leaves the gradients of
the model's parameters untouched (it differentiates with respect to its own variables only).
Random starts draw from torch's global generator: seed it with ``torch.manual_seed``.
"""

from __future__ import annotations

import json
import numbers
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from captum import robust
from torch import nn

from models.registry import Registry

# dataset spec name -> the kind of defaults it gets ("mnist" for 28x28 digits, "cifar" for natural images)
DATASET_KINDS = {"mnist": "mnist", "mnist5k": "mnist", "fashionmnist": "mnist", "cifar": "cifar", "cifar10": "cifar"}


@dataclass(frozen=True)
class AttackResult:
    """What an attack did to a batch of B inputs."""

    x_adv: torch.Tensor  # (B, C, H, W) adversarial inputs in [0, 1]
    success: torch.Tensor  # (B,) bool: the model's prediction on x_adv differs from the true label
    l2: torch.Tensor  # (B,) L2 norm of x_adv - x, pixel units
    linf: torch.Tensor  # (B,) L-inf norm of x_adv - x, pixel units


@dataclass(frozen=True)
class _Config:
    """Base of the attack configs: every field is a number >= 0 (> 0 for names in ``positive``).

    Values are cast to the type of the field's default, so that ``Attack.params`` is plain
    JSON (a numpy float or a float-valued int passed in comes back as float / int).
    """

    positive: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            integral = kind is int and isinstance(value, numbers.Real) and float(value).is_integer()
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or (kind is int and not integral):
                raise TypeError(f"{f.name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
            value = kind(value)
            if f.name in self.positive and not value > 0:
                raise ValueError(f"{f.name} must be > 0, got {value}")
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"{f.name} must be >= 0, got {value}")
            object.__setattr__(self, f.name, value)


@dataclass(frozen=True)
class FGSMConfig(_Config):
    eps: float = 0.3  # L-inf budget in pixels (MNIST; CIFAR-10 uses 8/255)


@dataclass(frozen=True)
class PGDConfig(_Config):
    positive: ClassVar[tuple[str, ...]] = ("step_size",)

    eps: float = 0.3  # L-inf radius in pixels (MNIST; CIFAR-10 uses 8/255)
    step_size: float = 0.01  # L-inf length of one signed-gradient step (CIFAR-10: 2/255)
    steps: int = 40  # MNIST as in Madry et al. 2018 (CIFAR-10: 10)


@dataclass(frozen=True)
class BIMConfig(PGDConfig):
    steps: int = 50  # BIM on MNIST takes 50 steps of 0.01 (CIFAR-10: 10)


@dataclass(frozen=True)
class DeepFoolConfig(_Config):
    overshoot: float = 0.02  # the final perturbation is (1 + overshoot) x the accumulated steps
    max_iter: int = 50  # a sample still classified correctly after this many steps gives up


@dataclass(frozen=True)
class CWConfig(_Config):
    # Budget: 1,000 mnist5k test images through the shipped small_cnn in about 3 minutes on a
    # 2-core CPU. At lr 0.01 in tanh space a pixel moves at most ~0.005 per step, so success
    # needs enough steps per search step (with c = 10: 100 -> 53%, 125 -> 85%, 250 -> 99%
    # flipped). On 200 of those images, one 250-step search at c = 3 flipped 97.5% at median L2
    # 1.41; three 200-step binary-search steps from c = 1 flipped the same 97.5% at median L2
    # 1.23 for twice the time: the binary search is the default. Carlini & Wagner's own
    # setting, search_steps=9 with max_iter=10,000, gives smaller norms at ~150x the cost.
    positive: ClassVar[tuple[str, ...]] = ("lr", "initial_c", "search_steps")

    lr: float = 0.01  # Adam learning rate on the tanh-space variable
    confidence: float = 0.0  # kappa: the best other logit must beat the true one by this much
    initial_c: float = 1.0  # weight of the misclassification term before the binary search moves it
    search_steps: int = 3  # binary-search steps over c, each a fresh optimisation from x
    max_iter: int = 200  # Adam steps per search step
    # Carlini & Wagner's ABORT_EARLY: checks per search step (every max_iter // abort_early steps)
    # at which an input whose loss fell by less than 0.01% since the last check stops (0: never)
    abort_early: int = 10


@dataclass(frozen=True)
class CWConfidence10Config(CWConfig):
    confidence: float = 10.0


@dataclass(frozen=True)
class CWConfidence20Config(CWConfig):
    confidence: float = 20.0


@dataclass(frozen=True)
class MarginPGDConfig(PGDConfig):
    margin: float = 10.0  # logits: push until the best wrong class leads the true one by this much
    steps: int = 100  # MNIST (CIFAR-10: 20 steps of 2/255)


class Attack:
    """Base class: ``Attack(model, **params)(x, y) -> AttackResult``.

    A subclass sets ``Config`` (a frozen dataclass whose defaults are the MNIST settings),
    ``presets`` (per dataset kind, the fields that differ from those defaults) and implements
    ``_perturb(x, y) -> x_adv``.
    """

    name: ClassVar[str] = ""  # set by register_attack
    Config: ClassVar[type[_Config]]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, model: nn.Module, **params: Any):
        known = [f.name for f in fields(self.Config)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise TypeError(f"attack {self.name!r}: unknown parameter(s) {', '.join(unknown)}; "
                            f"known: {', '.join(known)}")
        self.model = model
        self.config = self.Config(**params)

    @property
    def params(self) -> dict[str, Any]:
        """The parameters in use, defaults included (JSON-serialisable)."""
        return asdict(self.config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        """Attack ``x`` (B, C, H, W) in [0, 1] whose true labels are ``y`` (B,); returns an
        :class:`AttackResult` on ``x``'s device."""
        _check_batch(x, y)
        x = x.detach()
        x_adv = self._perturb(x, y).detach().clamp(0.0, 1.0)
        with torch.no_grad():
            success = self.model(x_adv).argmax(dim=1) != y
        delta = (x_adv - x).flatten(1)  # (B, C*H*W)
        return AttackResult(x_adv=x_adv, success=success, l2=delta.norm(dim=1), linf=delta.abs().amax(dim=1))

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float batch (B, C, H, W); got {x.dtype} of shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y must be integer labels of shape ({x.shape[0]},); got {y.dtype} of shape {tuple(y.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"x must be in pixel space [0, 1] (the model normalises); "
                         f"found values in [{x.min():.3g}, {x.max():.3g}]")


_ATTACKS: Registry[type[Attack]] = Registry("attack", ValueError)


def register_attack(name: str):
    """Decorator registering an :class:`Attack` subclass under ``name``."""

    def wrap(cls: type[Attack]) -> type[Attack]:
        cls.name = name
        return _ATTACKS.register(name)(cls)

    return wrap


def list_attacks(pattern: str = "*") -> list[str]:
    """Sorted names of the registered attacks matching the glob ``pattern``."""
    return _ATTACKS.names(pattern)


def create_attack(name: str, model: nn.Module, **params: Any) -> Attack:
    """The attack registered as ``name`` on ``model``; unset parameters take the config defaults.

    >>> attack = create_attack("fgsm", model, eps=8 / 255)
    """
    return _ATTACKS.get(name)(model, **params)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``ATTACK.NAME=VALUE`` strings (VALUE in JSON) -> {attack: {name: value}}, as
    ``gatescope analyze --attack-param`` takes them; a malformed item raises ValueError."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        attack, _, name = key.partition(".")
        if not (attack and name and value):
            raise ValueError(f"--attack-param {item!r}: expected ATTACK.NAME=VALUE, e.g. pgd.eps=0.1")
        overrides.setdefault(attack, {})[name] = json.loads(value)
    return overrides


def default_params(name: str, dataset: str) -> dict[str, Any]:
    """The literature's parameters of attack ``name`` for ``dataset``: a kind ("mnist",
    "cifar") or a dataset spec such as "mnist5k", "fashionmnist:ROOT" or "cifar10:ROOT"."""
    cls = _ATTACKS.get(name)
    base = dataset.partition(":")[0]
    if base not in DATASET_KINDS:
        raise ValueError(f"dataset {dataset!r}: no attack defaults for {base!r}; "
                         f"known: {', '.join(sorted(DATASET_KINDS))} (pass \"mnist\" or \"cifar\" for others)")
    return asdict(cls.Config(**cls.presets.get(DATASET_KINDS[base], {})))


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # per-sample loss on logits; captum's default (-log of the output) assumes probabilities
    return F.cross_entropy(logits, y, reduction="none")  # (B,)


@register_attack("fgsm")
class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): x + eps * sign(grad of the CE loss)."""

    Config = FGSMConfig
    presets = {"cifar": {"eps": 8 / 255}}

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fgsm = robust.FGSM(self.model, _cross_entropy, lower_bound=0.0, upper_bound=1.0)
        # captum leaves pixels with |grad| <= 1e-6 alone; a confidently classified input has
        # gradients that small everywhere and would never move. sign(0) = 0 covers true zeros.
        fgsm.zero_thresh = 0.0
        return fgsm.perturb(x.clone().requires_grad_(), self.config.eps, y)


class _IterativeLinf(Attack):
    """Signed-gradient ascent of the CE loss, projected onto the eps ball and [0, 1] each step."""

    Config = PGDConfig
    presets = {"cifar": {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10}}
    random_start: ClassVar[bool]

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pgd = robust.PGD(self.model, _cross_entropy, lower_bound=0.0, upper_bound=1.0)
        pgd.fgsm.zero_thresh = 0.0  # see FGSM
        with warnings.catch_warnings():
            # captum warns on every step that the (detached) iterate did not require gradients
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            return pgd.perturb(x.clone(), self.config.eps, self.config.step_size, self.config.steps, y,
                               random_start=self.random_start, norm="Linf")


@register_attack("bim")
class BIM(_IterativeLinf):
    """Basic iterative method (Kurakin et al. 2017): iterated FGSM from x itself."""

    Config = BIMConfig
    random_start = False


@register_attack("pgd")
class PGD(_IterativeLinf):
    """Projected gradient descent (Madry et al. 2018): BIM from a uniform random point of the ball."""

    random_start = True


@register_attack("deepfool")
class DeepFool(Attack):
    """Multi-class DeepFool (Moosavi-Dezfooli et al. 2016): repeated steps onto the nearest
    boundary of the model's linearisation, stopping per sample once it is misclassified."""

    Config = DeepFoolConfig

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + self.config.overshoot
        x_adv, r_tot = x.clone(), torch.zeros_like(x)  # r_tot: accumulated steps, before overshoot
        active = torch.arange(len(x), device=x.device)  # samples still classified as y
        for _ in range(self.config.max_iter):
            xa = x_adv[active].requires_grad_()
            logits = self.model(xa)  # (A, K)
            still = logits.argmax(dim=1) == y[active]
            active, logits = active[still], logits[still]  # finished samples drop out here
            if len(active) == 0:
                break
            ya = y[active]
            # (A, K, C, H, W) gradient of every logit; samples are independent, so the gradient
            # of a logit summed over the batch holds each sample's own gradient
            grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), xa, retain_graph=True)[0][still]
                                 for k in range(logits.shape[1])], dim=1)
            rows = torch.arange(len(active), device=x.device)
            f = (logits - logits[rows, ya, None]).detach()  # (A, K) f_k - f_y, < 0 while correct
            w = grads - grads[rows, ya, None]  # (A, K, C, H, W) gradients of f_k - f_y
            w_norm = w.flatten(2).norm(dim=2)  # (A, K)
            dist = (f.abs() / w_norm).nan_to_num(nan=float("inf"))  # linearised distance to each boundary
            dist[rows, ya] = float("inf")
            l = dist.argmin(dim=1)  # (A,) nearest boundary
            w_l, n_l = w[rows, l], w_norm[rows, l]
            # step just past that boundary (1e-4 as in the paper's code); no step if the gradient vanishes
            coef = torch.where(n_l > 0, (f[rows, l].abs() + 1e-4) / n_l.pow(2), torch.zeros_like(n_l))
            r_tot[active] += coef.view(-1, *[1] * (x.dim() - 1)) * w_l
            x_adv[active] = (x[active] + scale * r_tot[active]).clamp(0.0, 1.0)
        return x_adv


@register_attack("cw_l2")
class CarliniWagnerL2(Attack):
    """Carlini & Wagner's L2 attack (2017): minimise ||x' - x||^2 + c * max(Z_y - max_{k!=y} Z_k, -kappa)
    over x' = (tanh(w) + 1) / 2 with Adam, binary-searching c per sample.

    Returns, per sample, the successful iterate of smallest L2 over all search steps, or x itself
    where no iterate succeeded. As in the authors' code (ABORT_EARLY), an optimisation stops when
    its loss stalls (less than 0.01% lower than ``max_iter // abort_early`` steps before); their
    code stops a whole batch at once, here each input stops on its own, which is what their code
    does with one input per batch: the inputs are independent (eval mode), so an input's result
    does not depend on the batch it is in. Adam (torch's defaults) is written out so that the
    stopped inputs leave the batch and cost nothing.
    """

    Config = CWConfig
    betas, adam_eps = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        b = len(x)
        # atanh of x scaled into (-1, 1) so that pixels at 0 or 1 stay finite in tanh space
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        c = torch.full((b,), cfg.initial_c, device=x.device, dtype=x.dtype)
        lower, upper = torch.zeros_like(c), torch.full_like(c, float("inf"))  # bracket on the smallest c that succeeds
        best, best_l2 = x.clone(), torch.full_like(c, float("inf"))
        check = max(cfg.max_iter // cfg.abort_early, 1) if cfg.abort_early else 0
        (b1, b2), eps = self.betas, self.adam_eps
        for _ in range(cfg.search_steps):
            w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
            found = torch.zeros(b, dtype=torch.bool, device=x.device)
            prev = torch.full_like(c, float("inf"))
            rows = torch.arange(b, device=x.device)  # the inputs still optimising
            for step in range(cfg.max_iter):
                wa = w[rows].requires_grad_()
                x_new = (torch.tanh(wa) + 1) / 2
                logits = self.model(x_new)  # (B, K)
                real = logits.gather(1, y[rows, None]).squeeze(1)
                other = logits.scatter(1, y[rows, None], float("-inf")).amax(dim=1)  # best wrong class
                l2_sq = (x_new - x[rows]).flatten(1).pow(2).sum(dim=1)
                loss = l2_sq + c[rows] * (real - other + cfg.confidence).clamp_min(0)  # per input
                # gradient w.r.t. w only: loss.backward() would fill the model's .grad fields
                grad = torch.autograd.grad(loss.sum(), wa)[0]
                with torch.no_grad():
                    fooled = other - real > cfg.confidence
                    better = fooled & (l2_sq.sqrt() < best_l2[rows])
                    best_l2[rows[better]] = l2_sq.sqrt()[better]
                    best[rows[better]] = x_new[better]
                    found[rows] |= fooled
                    m[rows] = b1 * m[rows] + (1 - b1) * grad
                    v[rows] = b2 * v[rows] + (1 - b2) * grad * grad
                    t = step + 1
                    step_size = cfg.lr / (1 - b1 ** t)
                    denom = (v[rows] / (1 - b2 ** t)).sqrt() + eps
                    w[rows] = wa.detach() - step_size * m[rows] / denom
                    if check and step % check == 0:  # the authors' test, at iterations 0, check, 2 check, ...
                        stalled = loss > prev[rows] * 0.9999
                        prev[rows] = loss
                        rows = rows[~stalled]
                        if not len(rows):
                            break
            # success: c was enough, try smaller; failure: c too small, bisect or grow tenfold
            upper = torch.where(found, torch.minimum(upper, c), upper)
            lower = torch.where(found, lower, torch.maximum(lower, c))
            c = torch.where(upper.isinf(), c * 10, (lower + upper) / 2)
        return best


@register_attack("cw_l2_k10")
class CarliniWagnerL2Confidence10(CarliniWagnerL2):
    """Carlini-Wagner L2 with confidence kappa = 10: the adversarial's best wrong logit leads the
    true one by at least 10, far from the boundary that minimal attacks stop at."""

    Config = CWConfidence10Config


@register_attack("cw_l2_k20")
class CarliniWagnerL2Confidence20(CarliniWagnerL2):
    """Carlini-Wagner L2 with confidence kappa = 20."""

    Config = CWConfidence20Config


@register_attack("pgd_margin")
class MarginPGD(Attack):
    """L-inf PGD (random start) that maximises min(max_{k!=y} Z_k - Z_y, margin) on the logits Z:
    it keeps going past the decision boundary until the wrong class leads by ``margin``
    (the confident counterpart of ``pgd``, which stops gaining once cross-entropy saturates)."""

    Config = MarginPGDConfig
    presets = {"cifar": {"eps": 8 / 255, "step_size": 2 / 255, "steps": 20}}

    def _perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        adv = (x + torch.empty_like(x).uniform_(-cfg.eps, cfg.eps)).clamp(0.0, 1.0)
        for _ in range(cfg.steps):
            adv.requires_grad_(True)
            gain = margin_of(self.model(adv), y).clamp_max(cfg.margin).sum()
            grad, = torch.autograd.grad(gain, adv)
            adv = adv.detach() + cfg.step_size * grad.sign()
            adv = torch.min(torch.max(adv, x - cfg.eps), x + cfg.eps).clamp(0.0, 1.0)
        return adv


def margin_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) best wrong logit minus the logit of class ``y``: > 0 once misclassified."""
    real = logits.gather(1, y[:, None]).squeeze(1)
    return logits.scatter(1, y[:, None], float("-inf")).amax(dim=1) - real
