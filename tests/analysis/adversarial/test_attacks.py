"""Attacks against their textbook definitions on linear models, plus registry-wide contract tests."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.adversarial import attacks
from analysis.adversarial.attacks import Attack, AttackResult, FGSMConfig, create_attack, default_params, list_attacks
from conftest import DEFAULT_RUN

SHAPE = (1, 4, 4)  # tiny grayscale "images"; the linear models flatten them to 16 features


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these models are tiny: on a busy 2-core machine, syncing two threads per op costs far
    # more than the ops themselves (10x slower test file measured)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class LinearModel(nn.Module):
    """logits = W x + b on flattened pixels, so gradients and boundaries are known in closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _linear(classes: int, seed: int = 0) -> LinearModel:
    """Random weights; biases that put every logit near 0 at mid-gray, so the boundaries pass
    close to 0.5 and the minimal steps from :func:`_mid_gray` inputs stay inside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    d = SHAPE[0] * SHAPE[1] * SHAPE[2]
    weight = torch.randn(classes, d, generator=g)
    return LinearModel(weight, -0.5 * weight.sum(dim=1) + 2 * torch.randn(classes, generator=g)).eval()


def _mid_gray(n: int, seed: int = 0, spread: float = 0.05) -> torch.Tensor:
    """Inputs near 0.5, far enough from 0 and 1 that clamping never bites."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 + spread * (2 * torch.rand(n, *SHAPE, generator=g) - 1)


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _boundary_distance(model: LinearModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) exact L2 distance from each x to the nearest boundary between y and another class."""
    w, b = model.linear.weight.detach(), model.linear.bias.detach()
    with torch.no_grad():
        logits = model(x)  # (B, K)
    gap = logits.gather(1, y[:, None]) - logits  # (B, K) f_y - f_k
    normal = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)  # (B, K) ||w_y - w_k||
    dist = gap / normal
    dist[torch.arange(len(y)), y] = float("inf")
    return dist.min(dim=1).values


# ---------------------------------------------------------------- FGSM


def test_fgsm_is_eps_times_the_sign_of_the_loss_gradient():
    model, x = _linear(10), _mid_gray(8)
    y = torch.arange(8)
    xg = x.clone().requires_grad_()
    grad, = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    result = create_attack("fgsm", model, eps=0.1)(x, y)
    torch.testing.assert_close(result.x_adv, x + 0.1 * grad.sign(), rtol=0, atol=1e-7)
    torch.testing.assert_close(result.linf, torch.full((8,), 0.1), rtol=0, atol=1e-6)


def test_fgsm_moves_confidently_classified_inputs():
    # captum skips gradients below 1e-6 by default; this input's gradients are ~1e-10
    d = SHAPE[0] * SHAPE[1] * SHAPE[2]
    model = LinearModel(torch.stack([1.5 * torch.ones(d), -1.5 * torch.ones(d)]), torch.zeros(2)).eval()
    x, y = torch.full((1, *SHAPE), 0.5), torch.tensor([0])
    xg = x.clone().requires_grad_()
    grad, = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    assert 0 < grad.abs().max() < 1e-6
    result = create_attack("fgsm", model, eps=0.1)(x, y)
    torch.testing.assert_close(result.x_adv, x + 0.1 * grad.sign(), rtol=0, atol=1e-7)


def test_fgsm_clamps_to_pixel_range():
    model = _linear(10)
    x, y = torch.rand(16, *SHAPE), torch.randint(0, 10, (16,))
    result = create_attack("fgsm", model, eps=0.3)(x, y)
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.linf.max() <= 0.3 + 1e-6


# ---------------------------------------------------------------- BIM and PGD


@pytest.mark.parametrize("name", ["bim", "pgd"])
def test_iterative_attacks_stay_in_the_ball_and_raise_the_loss(name):
    model = _linear(10)
    x, y = torch.rand(16, *SHAPE), torch.randint(0, 10, (16,))  # some pixels near 0 and 1
    eps = 0.1
    result = create_attack(name, model, eps=eps, step_size=0.02, steps=10)(x, y)
    assert (result.x_adv - x).abs().max() <= eps + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        before = F.cross_entropy(model(x), y, reduction="none")
        after = F.cross_entropy(model(result.x_adv), y, reduction="none")
    assert bool((after > before).all())


def test_pgd_starts_at_a_random_point_of_the_ball():
    model, x = _linear(10), _mid_gray(4)
    y = _predict(model, x)
    pgd = create_attack("pgd", model, eps=0.1, step_size=0.01, steps=0)
    torch.manual_seed(1)
    first = pgd(x, y).x_adv
    torch.manual_seed(2)
    second = pgd(x, y).x_adv
    assert not torch.equal(first, second)
    assert (first - x).abs().max() <= 0.1 + 1e-6 and (first - x).abs().max() > 0.05
    bim = create_attack("bim", model, eps=0.1, step_size=0.01, steps=0)(x, y)
    assert torch.equal(bim.x_adv, x)  # BIM starts at x itself


# ---------------------------------------------------------------- DeepFool


@pytest.mark.parametrize("classes", [2, 5])
def test_deepfool_takes_the_minimal_step_to_a_linear_boundary(classes):
    model, x = _linear(classes, seed=classes), _mid_gray(16, seed=classes)
    y = _predict(model, x)
    overshoot = 0.02
    result = create_attack("deepfool", model, overshoot=overshoot, max_iter=50)(x, y)
    assert bool(result.success.all())
    assert 0 < result.x_adv.min() and result.x_adv.max() < 1  # no clamping: the analytic answer holds
    # the step is (|f| + 1e-4) / ||w|| long; 1e-4 / ||w|| is < 1e-4 here
    expected = (1 + overshoot) * _boundary_distance(model, x, y)
    torch.testing.assert_close(result.l2, expected, rtol=1e-3, atol=2e-4)


def test_deepfool_leaves_misclassified_inputs_alone():
    model, x = _linear(5), _mid_gray(6)
    wrong = (_predict(model, x) + 1) % 5
    result = create_attack("deepfool", model)(x, wrong)
    assert torch.equal(result.x_adv, x)
    assert bool(result.success.all()) and bool((result.l2 == 0).all())


# ---------------------------------------------------------------- Carlini-Wagner L2


@pytest.mark.parametrize("classes", [2, 5])
def test_cw_l2_finds_a_near_minimal_perturbation_on_a_linear_model(classes):
    model, x = _linear(classes), _mid_gray(8)
    y = _predict(model, x)
    result = create_attack("cw_l2", model, initial_c=1.0, search_steps=6, max_iter=200)(x, y)
    assert bool(result.success.all())
    minimal = _boundary_distance(model, x, y)  # here 0.08 to 0.36
    assert bool((result.l2 >= minimal - 1e-4).all())  # nothing beats the exact distance
    # Adam moves each pixel by about lr / 2 per step, hence the absolute slack. With more than
    # two classes the objective is not convex: CW may settle on a farther boundary (up to 1.2x
    # for other seeds), as the method itself would.
    assert bool((result.l2 <= 1.1 * minimal + 0.01).all())


@pytest.mark.parametrize("params", [{"max_iter": 0}, {"initial_c": 1e-6, "search_steps": 1, "max_iter": 50}],
                         ids=["no-iterations", "tiny-c"])
def test_cw_l2_returns_x_where_it_never_succeeds(params):
    model, x = _linear(5), _mid_gray(8)
    y = _predict(model, x)
    result = create_attack("cw_l2", model, **params)(x, y)
    assert torch.equal(result.x_adv, x)
    assert not bool(result.success.any()) and bool((result.l2 == 0).all())


def _cw_with_torch_adam(model, x, y, *, c: float, steps: int, lr: float = 0.01) -> torch.Tensor:
    """One search step of CW-L2 (kappa 0) as written before the hand-written Adam: torch.optim.Adam
    on the whole batch, best successful iterate per input."""
    w = torch.atanh((2 * x - 1) * (1 - 1e-6)).requires_grad_()
    opt = torch.optim.Adam([w], lr=lr)
    best, best_l2 = x.clone(), torch.full((len(x),), float("inf"))
    for _ in range(steps):
        x_new = (torch.tanh(w) + 1) / 2
        logits = model(x_new)
        real = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        l2_sq = (x_new - x).flatten(1).pow(2).sum(dim=1)
        loss = (l2_sq + c * (real - other).clamp_min(0)).sum()
        with torch.no_grad():
            better = (other > real) & (l2_sq.sqrt() < best_l2)
            best_l2 = torch.where(better, l2_sq.sqrt(), best_l2)
            best[better] = x_new[better]
        w.grad = torch.autograd.grad(loss, w)[0]
        opt.step()
    return best


def test_cw_l2_without_abort_is_torch_adam_step_for_step():
    model, x = _linear(5), _mid_gray(8)
    y = _predict(model, x)
    ours = create_attack("cw_l2", model, initial_c=3.0, search_steps=1, max_iter=120, abort_early=0)(x, y)
    assert torch.allclose(ours.x_adv, _cw_with_torch_adam(model, x, y, c=3.0, steps=120), atol=1e-6)


class _RowCounter(nn.Module):
    """Counts the input rows the wrapped model is asked for."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x)


def test_cw_l2_aborts_each_input_on_its_own_and_saves_work():
    base, x = _linear(5), _mid_gray(8)
    y = _predict(base, x)
    params = dict(initial_c=1.0, search_steps=3, max_iter=400)
    early, full = _RowCounter(base), _RowCounter(base)
    aborted = create_attack("cw_l2", early, **params)(x, y)
    complete = create_attack("cw_l2", full, **params, abort_early=0)(x, y)
    assert early.rows < 0.7 * full.rows  # stalled inputs leave the batch
    assert bool(aborted.success.all()) and bool((aborted.l2 <= complete.l2 * 1.05 + 0.01).all())
    alone = [create_attack("cw_l2", base, **params)(x[i:i + 1], y[i:i + 1]).x_adv for i in (0, 5)]
    assert torch.allclose(torch.cat(alone), aborted.x_adv[[0, 5]], atol=1e-6)  # as if attacked one per batch


# ---------------------------------------------------------------- confident attacks


def test_confident_cw_presets_are_kappa_10_and_20():
    assert default_params("cw_l2_k10", "cifar")["confidence"] == 10.0
    assert default_params("cw_l2_k20", "mnist")["confidence"] == 20.0
    assert default_params("cw_l2", "cifar")["confidence"] == 0.0


def test_confident_cw_pays_for_the_margin_on_a_linear_model():
    # two classes: the smallest L2 step that makes the other logit lead by kappa is (gap + kappa) / ||w_y - w_k||
    model, x = _linear(2), _mid_gray(8)
    y = _predict(model, x)
    kappa = 1.0
    result = create_attack("cw_l2_k10", model, confidence=kappa, initial_c=1.0, search_steps=6, max_iter=200)(x, y)
    w = model.linear.weight.detach()
    with torch.no_grad():
        margin = attacks.margin_of(model(result.x_adv), y)
        gap = -attacks.margin_of(model(x), y)
    minimal = (gap + kappa) / (w[0] - w[1]).norm()
    assert bool(result.success.all()) and bool((margin >= kappa - 1e-4).all())
    assert bool((result.l2 >= minimal - 1e-4).all()) and bool((result.l2 <= 1.1 * minimal + 0.01).all())


def test_pgd_margin_stops_pushing_once_the_margin_is_reached():
    model, x = _linear(2), _mid_gray(8)
    y = _predict(model, x)
    target, step = 2.0, 0.01
    result = create_attack("pgd_margin", model, eps=0.5, step_size=step, steps=300, margin=target)(x, y)
    with torch.no_grad():
        margin = attacks.margin_of(model(result.x_adv), y)
    one_step = step * (model.linear.weight[0] - model.linear.weight[1]).abs().sum().item()  # the most one step adds
    assert bool(result.success.all())
    assert bool((margin >= target).all()) and bool((margin <= target + one_step + 1e-4).all())
    assert bool((result.linf <= 0.5 + 1e-6).all())


# ---------------------------------------------------------------- registry and contract


def test_registry_lists_the_minimal_confident_and_compute_attacks():
    assert list_attacks() == ["bim", "compute", "cw_l2", "cw_l2_k10", "cw_l2_k20", "deepfool", "fgsm", "pgd",
                              "pgd_margin"]
    assert list_attacks("*gd") == ["pgd"]


def test_register_attack_makes_a_new_attack_available_by_name(monkeypatch):
    monkeypatch.setattr(attacks._ATTACKS, "_entries", dict(attacks._ATTACKS._entries))  # registered for this test only

    @attacks.register_attack("noise")
    class Noise(Attack):
        Config = FGSMConfig
        presets = {"cifar": {"eps": 0.01}}

        def _perturb(self, x, y):
            return x + self.config.eps * torch.randn_like(x)

    assert "noise" in list_attacks() and Noise.name == "noise"
    assert default_params("noise", "cifar10") == {"eps": 0.01}
    result = create_attack("noise", _linear(3), eps=0.05)(_mid_gray(2), torch.tensor([0, 1]))
    assert result.linf.max() > 0


def test_unknown_names_and_parameters_are_clear_errors():
    model = _linear(3)
    with pytest.raises(ValueError, match="unknown attack 'cw'; known: bim, compute, cw_l2, cw_l2_k10"):
        create_attack("cw", model)
    with pytest.raises(TypeError, match="unknown parameter.*epsilon; known: eps, step_size, steps"):
        create_attack("pgd", model, epsilon=0.1)
    with pytest.raises(ValueError, match="eps must be >= 0, got -0.1"):
        create_attack("fgsm", model, eps=-0.1)
    with pytest.raises(TypeError, match="steps must be an integer, got 2.5"):
        create_attack("bim", model, steps=2.5)
    with pytest.raises(ValueError, match="no attack defaults for 'imagefolder'; known: cifar, cifar10"):
        default_params("pgd", "imagefolder:/data")
    with pytest.raises(ValueError, match=r"pixel space \[0, 1\]"):
        create_attack("fgsm", model)(torch.full((2, *SHAPE), 2.0), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(2,\)"):
        create_attack("fgsm", model)(torch.rand(2, *SHAPE), torch.tensor([0, 1, 2]))


def test_default_params_follow_the_literature():
    assert default_params("fgsm", "mnist") == {"eps": 0.3}
    assert default_params("bim", "mnist5k") == {"eps": 0.3, "step_size": 0.01, "steps": 50}
    assert default_params("pgd", "fashionmnist:/data") == {"eps": 0.3, "step_size": 0.01, "steps": 40}
    assert default_params("fgsm", "cifar") == {"eps": 8 / 255}
    for name in ("bim", "pgd"):
        assert default_params(name, "cifar10:/data") == {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10}
    for dataset in ("mnist", "cifar"):
        assert default_params("deepfool", dataset) == {"overshoot": 0.02, "max_iter": 50}
        assert default_params("cw_l2", dataset) == {
            "lr": 0.01, "confidence": 0.0, "initial_c": 1.0, "search_steps": 3, "max_iter": 200,
            "abort_early": 10}


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_keeps_the_contract(name, training):
    model = TinyCNN().train(training)
    x, y = torch.rand(6, *SHAPE), torch.randint(0, 10, (6,))
    attack = create_attack(name, model, **default_params(name, "mnist"))
    assert attack.name == name
    assert json.loads(json.dumps(attack.params)) == attack.params
    result = attack(x, y)
    assert isinstance(result, AttackResult)
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert result.success.shape == (6,) and result.success.dtype == torch.bool
    assert result.l2.shape == (6,) and result.linf.shape == (6,)
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert torch.equal(result.success, _predict(model, result.x_adv) != y)
    delta = (result.x_adv - x).flatten(1)
    torch.testing.assert_close(result.l2, delta.norm(dim=1))
    torch.testing.assert_close(result.linf, delta.abs().amax(dim=1))
    assert model.training is training
    assert all(p.grad is None for p in model.parameters())
    assert not result.x_adv.requires_grad and not x.requires_grad


# ---------------------------------------------------------------- the shipped model


def test_pgd_flips_most_digits_of_the_shipped_model():
    from analysis import load_dataset
    from models import load_run

    model = load_run(DEFAULT_RUN).model
    x, y = load_dataset("mnist5k", "test").dataset.tensors
    x, y = x[:32], y[:32]
    result = create_attack("pgd", model, **default_params("pgd", "mnist"))(x, y)
    assert result.success.float().mean() >= 0.9
    assert result.linf.max() <= 0.3 + 1e-6
    assert not model.training
