
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, TensorDataset

from analysis import load_dataset
from analysis.adversarial.detector_base import (
    DetectorError, activations, create_detector, detector_class, list_detectors,
)
from analysis.adversarial.mahalanobis import MAGNITUDES, MahalanobisLee
from conftest import DEFAULT_RUN
from models import GatedConv, create_model, load_run, relaxed_decisions


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread():
    # on a shared 2-core machine torch's and scikit-learn's OpenMP pools starve each other
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def shipped():
    """The default model, 300 reference images and labels, 500 clean test images."""
    model = load_run(DEFAULT_RUN).model
    ref_x, ref_y = load_dataset("mnist5k", "train").dataset.tensors
    x, _ = load_dataset("mnist5k", "test").dataset.tensors
    return model, ref_x[:300], ref_y[:300], x[:500]


def _noisy(x, amplitude, seed=0):
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) - 0.5
    return (x + amplitude * noise).clamp(0, 1)


def _numpy_pooled(model, x):
    """Per block, the (N, D) float64 features: GatedConv outputs after ReLU averaged over space, fc.input."""
    with torch.no_grad():
        acts = activations(model.eval(), x)
    return {n: (a.flatten(2).mean(2) if a.dim() == 4 else a).double().numpy() for n, a in acts.items() if n != "logits"}


def _numpy_gaussians(features, labels):
    """Per block: the class means and the pseudo-inverse of the tied covariance, from all
    features at once, the textbook way."""
    out = {}
    for name, f in features.items():
        means = np.stack([f[labels == c].mean(0) for c in range(10)])
        centred = f - means[labels]
        out[name] = (means, np.linalg.pinv(centred.T @ centred / len(f), hermitian=True))
    return out


def _numpy_confidence(f, means, precision):
    diff = f[:, None, :] - means[None]  # (N, C, D)
    return -np.einsum("ncd,de,nce->nc", diff, precision, diff).min(1)


# ---------------------------------------------------------------------------------------------
# Class statistics and the score


def test_streamed_statistics_equal_the_closed_form_on_all_features(shipped):
    model, ref_x, ref_y, _ = shipped
    cuts = [0, 7, 100, 101, 233, 300]  # uneven batches, one of a single image
    loader = [(ref_x[a:b], ref_y[a:b]) for a, b in zip(cuts, cuts[1:])]
    det = MahalanobisLee(model, ref_x[:20], ref_y[:20], reference_loader=loader, magnitude=0)
    # the same float32 activations (batch by batch), then all at once in float64
    pooled = [_numpy_pooled(model, xb) for xb, _ in loader]
    expected = _numpy_gaussians({n: np.concatenate([p[n] for p in pooled]) for n in det.feature_names}, ref_y.numpy())
    # the blocks: the last conv at each resolution; fc.input is the last one pooled, so not repeated
    assert det.feature_names == ["convs.0", "convs.2", "convs.4"]
    assert det.params["n_reference"] == 300 and det.params["reference"] == "reference_loader"
    for name, (means, precision) in expected.items():
        assert det.means[name].dtype == det.precisions[name].dtype == torch.float64
        np.testing.assert_allclose(det.means[name].numpy(), means, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(det.precisions[name].numpy(), precision, rtol=1e-7, atol=1e-9 * abs(precision).max())
    # ref_x, ref_y in batches of 64: the same statistics, up to float32 activations
    direct = MahalanobisLee(model, ref_x, ref_y, magnitude=0, batch_size=64)
    assert direct.params["n_reference"] == 300 and direct.params["reference"] == "ref_x"
    for name, (means, precision) in expected.items():
        np.testing.assert_allclose(direct.means[name].numpy(), means, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(direct.precisions[name].numpy(), precision, rtol=0, atol=1e-3 * abs(precision).max())
    # a torch DataLoader (its batches are lists) in the same batches: the same numbers
    loaded = MahalanobisLee(model, ref_x[:20], ref_y[:20], magnitude=0,
                            reference_loader=DataLoader(TensorDataset(ref_x, ref_y), batch_size=64))
    for name in expected:
        torch.testing.assert_close(loaded.means[name], direct.means[name], rtol=0, atol=0)
        torch.testing.assert_close(loaded.precisions[name], direct.precisions[name], rtol=0, atol=0)


def test_magnitude_zero_is_the_plain_mahalanobis_confidence(shipped):
    model, ref_x, ref_y, x = shipped
    det = MahalanobisLee(model, ref_x, ref_y, magnitude=0)
    points, reference = _numpy_pooled(model, x[:60]), _numpy_gaussians(_numpy_pooled(model, ref_x), ref_y.numpy())
    by_hand = np.stack([_numpy_confidence(points[n], *reference[n]) for n in det.feature_names], 1)
    np.testing.assert_allclose(det.features(x[:60]), by_hand, rtol=1e-5)


def test_preprocessing_is_a_signed_gradient_step_towards_the_closest_class_mean(shipped):
    model, ref_x, ref_y, x = shipped
    eps, images = 0.002, x[:20]
    det, plain_det = (MahalanobisLee(model, ref_x, ref_y, magnitude=m) for m in (eps, 0))
    reference = _numpy_gaussians(_numpy_pooled(model, ref_x), ref_y.numpy())
    for i, name in enumerate(det.feature_names):
        means, precision = (torch.from_numpy(a) for a in reference[name])
        leaf = images.clone().requires_grad_(True)
        a = activations(model.eval(), leaf)[name].double()
        f = a.flatten(2).mean(2) if a.dim() == 4 else a
        diff = f[:, None, :] - means  # (N, C, D)
        distance = torch.einsum("ncd,de,nce->nc", diff, precision, diff).min(1).values
        (grad,) = torch.autograd.grad(distance.sum(), leaf)
        stepped = (images - eps * grad.sign()).clamp(0, 1)
        by_hand = _numpy_confidence(_numpy_pooled(model, stepped)[name], *reference[name])
        np.testing.assert_allclose(det.features(images)[:, i], by_hand, rtol=1e-5)
        # BPDA: the step is a constant, so the gradient is the plain score's at the stepped images
        leaf, at_step = images.clone().requires_grad_(True), stepped.clone().requires_grad_(True)
        (bpda,) = torch.autograd.grad(det.torch_features(leaf)[:, i].sum(), leaf)
        (plain,) = torch.autograd.grad(plain_det.torch_features(at_step)[:, i].sum(), at_step)
        torch.testing.assert_close(bpda, plain, rtol=1e-4, atol=1e-6 * float(plain.abs().max()))
    assert all(p.grad is None for p in model.parameters())


def test_a_small_step_brings_every_point_closer_to_its_class_mean(shipped):
    _, ref_x, ref_y, x = shipped
    ungated = create_model("small_cnn", gated=False, in_channels=1).eval()  # piecewise linear: no decision flips
    before = MahalanobisLee(ungated, ref_x, ref_y, magnitude=0).features(x[:100])  # -distance to the closest mean
    after = MahalanobisLee(ungated, ref_x, ref_y, magnitude=0.0005).features(x[:100])
    assert (after > before).all()  # every image, every block: closer after its own block's step


def test_a_small_step_brings_nearly_every_point_closer_on_the_shipped_model(shipped):
    model, ref_x, ref_y, x = shipped
    before = MahalanobisLee(model, ref_x, ref_y, magnitude=0).features(x[:100])
    after = MahalanobisLee(model, ref_x, ref_y, magnitude=0.0005).features(x[:100])
    # ~1% of (image, block) pairs move away: a gated layer switching masks is a jump the gradient cannot see
    assert (after > before).mean() > 0.95 and (after > before).mean(0).min() > 0.9


# ---------------------------------------------------------------------------------------------
# The magnitude chosen on validation


def test_the_chosen_magnitude_has_the_best_validation_auc(shipped):
    model, ref_x, ref_y, x = shipped
    faint = _noisy(x, 0.015)  # weak noise: the magnitudes' AUCs differ
    fit, val = (x[:80], faint[80:160]), (x[160:200], faint[200:240])
    det = MahalanobisLee(model, ref_x, ref_y)
    det.select(fit, val)
    aucs = det.params["magnitude_auc"]
    assert list(aucs) == [str(m) for m in MAGNITUDES] and all(type(a) is float for a in aucs.values())
    assert det.params["magnitude"] == max(MAGNITUDES, key=lambda m: aucs[str(m)])
    assert len(set(aucs.values())) > 1  # a real choice
    for magnitude in (0.0, det.params["magnitude"], 0.0014):
        fixed = MahalanobisLee(model, ref_x, ref_y, magnitude=magnitude)
        feats = [fixed.features(images) for images in (*fit, *val)]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(np.concatenate(feats[:2]), np.r_[np.zeros(80), np.ones(80)])
        auc = roc_auc_score(np.r_[np.zeros(40), np.ones(40)], clf.predict_proba(np.concatenate(feats[2:]))[:, 1])
        assert aucs[str(magnitude)] == pytest.approx(auc, abs=1e-12)


def test_a_magnitude_given_to_the_constructor_is_kept_by_fit(shipped):
    model, ref_x, ref_y, x = shipped
    det = MahalanobisLee(model, ref_x, ref_y, magnitude=0.001).fit(x[:20], _noisy(x[20:40], 1.0))
    assert det.params["magnitude"] == 0.001 and "magnitude_auc" not in det.params


# ---------------------------------------------------------------------------------------------
# Fitted on the shipped model


def test_fitting_chooses_a_magnitude_and_leaves_no_gradients(shipped):
    # separation, determinism, hooks and modes: the registry-wide test in test_detectors.py
    model, ref_x, ref_y, clean = shipped
    noisy = _noisy(clean, 1.0)
    det = create_detector("mahalanobis-lee", model, ref_x, ref_y).fit(clean[:200], noisy[200:400])
    assert det.params["magnitude"] in MAGNITUDES and det.validation["auc"] > 0.9
    assert all(p.grad is None for p in model.parameters())


def test_torch_logit_is_differentiable_and_is_the_logit_of_score(shipped):
    model, ref_x, ref_y, x = shipped
    noisy = _noisy(x, 1.0)
    det = MahalanobisLee(model, ref_x, ref_y, magnitude=0.002).fit(x[:50], noisy[50:100])  # the BPDA path
    images = torch.cat([x[400:405], noisy[:5]]).requires_grad_(True)
    model.eval()
    logit = det.torch_logit(images)
    (grad,) = torch.autograd.grad(logit.sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    np.testing.assert_allclose(torch.sigmoid(logit).detach().numpy(), det.score(images.detach()), rtol=0, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules() if isinstance(m, GatedConv))
    # an adaptive attack differentiates through relaxed decisions: the value stays the deployed score
    with relaxed_decisions(model):
        relaxed = det.torch_logit(images)
    torch.testing.assert_close(relaxed, logit, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Registry and bad input


def test_it_is_registered_as_a_baseline():
    assert "mahalanobis-lee" in list_detectors()
    assert detector_class("mahalanobis-lee") is MahalanobisLee and MahalanobisLee.family == "baseline"


def test_a_class_missing_from_the_reference_set_is_named(shipped):
    model, ref_x, ref_y, _ = shipped
    keep = (ref_y != 3) & (ref_y != 7)
    with pytest.raises(DetectorError, match=r"no image of class 3, 7 of the model's 10"):
        MahalanobisLee(model, ref_x[keep], ref_y[keep])


@pytest.mark.parametrize("magnitude", [-0.001, float("nan"), "0.01"])
def test_a_bad_magnitude_says_what_is_expected(shipped, magnitude):
    model, ref_x, ref_y, _ = shipped
    with pytest.raises(DetectorError, match=r"magnitude must be a finite number >= 0"):
        MahalanobisLee(model, ref_x, ref_y, magnitude=magnitude)


@pytest.mark.parametrize("loader, message", [
    ([], "yielded no batch"),
    ([torch.zeros(4, 1, 28, 28)], r"\(images, labels\) pairs; batch 0 is Tensor"),
    ([(torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long))], r"batch 0: labels must be \(4,\) integers"),
    ([(torch.zeros(4, 1, 28, 28), torch.full((4,), 10))], r"batch 0: labels must be class indices in \[0, 10\)"),
])
def test_a_bad_reference_loader_is_named(shipped, loader, message):
    model, ref_x, ref_y, _ = shipped
    with pytest.raises(DetectorError, match=message):
        MahalanobisLee(model, ref_x, ref_y, reference_loader=loader)


def test_features_before_the_magnitude_is_chosen_say_how_to_choose_it(shipped):
    model, ref_x, ref_y, x = shipped
    with pytest.raises(DetectorError, match="no noise magnitude yet: fit chooses it"):
        MahalanobisLee(model, ref_x, ref_y).features(x[:4])
