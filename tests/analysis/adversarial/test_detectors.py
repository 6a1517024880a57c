import json

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, ortho_group
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KernelDensity
from threadpoolctl import threadpool_limits

from analysis import load_dataset
from analysis.adversarial.detectors import (
    DetectorError, class_gaussians, create_detector, kd_log_density, lid_estimate, lid_mle, list_detectors,
    mahalanobis_scores, mc_dropout_uncertainty,
)
from conftest import DEFAULT_RUN
from models import GatedConv, create_model, load_run



@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread():
    # OpenMP workers spin while waiting: on a shared 2-core machine, scikit-learn's (gradient
    # boosting) and torch's pools starve each other and a 0.4 s fit can take a minute
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


# ---------------------------------------------------------------------------------------------
# LID


def _embedded(rng, n, dim, ambient=10):
    """n points filling a ``dim``-D standard Gaussian, rotated into ``ambient`` dimensions."""
    basis = ortho_group.rvs(ambient, random_state=rng)[:dim]  # (dim, ambient) orthonormal rows
    return torch.from_numpy(rng.standard_normal((n, dim)) @ basis)


def test_lid_mle_is_the_textbook_formula():
    # -(mean(log(1/4), log(2/4), log(4/4)))^-1 = 3 / log 8, in any order
    assert lid_mle(np.array([[4.0, 1.0, 2.0]]))[0] == pytest.approx(3 / np.log(8))


def test_lid_of_points_on_a_line_is_about_one():
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(10)
    line = lambda n: torch.from_numpy(rng.random((n, 1)) * direction + 3.0)  # noqa: E731
    lid = lid_estimate(line(200), line(1000), k=20)
    assert np.median(lid) == pytest.approx(1.0, rel=0.3)


def test_lid_of_points_filling_five_dimensions_is_about_five():
    rng = np.random.default_rng(1)
    reference = _embedded(rng, 1200, 5)
    lid = lid_estimate(reference[:200], reference[200:], k=20)
    assert np.median(lid) == pytest.approx(5.0, rel=0.3)


def test_lid_never_counts_a_point_as_its_own_neighbour():
    points = _embedded(np.random.default_rng(2), 60, 3)
    itself = torch.eye(60, dtype=torch.bool)
    lid = lid_estimate(points, points, k=10, exclude=itself)
    by_hand = [lid_estimate(points[i:i + 1], torch.cat([points[:i], points[i + 1:]]), k=10)[0] for i in range(60)]
    assert np.isfinite(lid).all()
    np.testing.assert_allclose(lid, by_hand)


# ---------------------------------------------------------------------------------------------
# Mahalanobis


def test_mahalanobis_distance_is_the_closed_form_for_a_diagonal_covariance():
    rng = np.random.default_rng(3)
    means = rng.standard_normal((3, 4))
    sigma = np.array([0.5, 1.0, 2.0, 4.0])
    points = rng.standard_normal((50, 4)) * 3
    by_hand = (((points[:, None, :] - means[None]) / sigma) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(mahalanobis_scores(points, means, np.diag(1 / sigma**2)), -by_hand)


def test_mahalanobis_separates_a_shifted_gaussian_from_the_classes():
    rng = np.random.default_rng(4)
    cov = np.cov(rng.standard_normal((6, 40)))  # a shared, non-diagonal covariance
    centres = rng.standard_normal((3, 6)) * 4
    labels = rng.integers(0, 3, 1500)
    features = centres[labels] + rng.multivariate_normal(np.zeros(6), cov, 1500)
    means, precision = class_gaussians(features[:1000], labels[:1000])
    np.testing.assert_allclose(means, centres, atol=0.3)
    inside = mahalanobis_scores(features[1000:], means, precision)
    shifted = mahalanobis_scores(rng.multivariate_normal(np.full(6, 3.0), cov, 500), means, precision)
    assert roc_auc_score(np.r_[np.zeros(500), np.ones(500)], -np.r_[inside, shifted]) > 0.95


# ---------------------------------------------------------------------------------------------
# Kernel density and Bayesian uncertainty


def test_kernel_density_is_the_mean_of_gaussians_and_higher_at_a_training_point():
    rng = np.random.default_rng(5)
    reference = rng.standard_normal((300, 8))
    points = np.r_[reference[:5], reference[:5] + 10.0]  # training points, then far away
    log_density = kd_log_density(points, reference, bandwidth=1.2)
    # the mean of Gaussians N(reference_j, 1.2^2 I), and sklearn near the data (its tree is approximate far away)
    kernels = np.stack([multivariate_normal(r, 1.2**2).logpdf(points) for r in reference])  # (300, 10)
    np.testing.assert_allclose(log_density, logsumexp(kernels, axis=0) - np.log(300), rtol=1e-10)
    sklearn = KernelDensity(kernel="gaussian", bandwidth=1.2).fit(reference).score_samples(points[:5])
    np.testing.assert_allclose(log_density[:5], sklearn, rtol=1e-8)
    assert (log_density[:5] > log_density[5:] + 10).all()


def test_bayesian_uncertainty_is_zero_without_dropout_and_positive_with_it():
    head = torch.nn.Linear(16, 10)
    features = torch.randn(40, 16)
    with torch.no_grad():
        off = mc_dropout_uncertainty(features, head, p=0.0, samples=20, seed=0)
        on = mc_dropout_uncertainty(features, head, p=0.5, samples=20, seed=0)
        again = mc_dropout_uncertainty(features[:7], head, p=0.5, samples=20, seed=0)
    assert off.shape == on.shape == (40,)
    assert (off == 0).all() and (on > 0).all()
    np.testing.assert_allclose(again, on[:7], rtol=1e-6)  # same masks, whatever the batch


# ---------------------------------------------------------------------------------------------
# Every registered detector on the shipped model


@pytest.fixture(scope="module")
def shipped():
    """The default model, 300 reference images, clean test images and the same with strong noise."""
    model = load_run(DEFAULT_RUN).model
    ref_x, ref_y = load_dataset("mnist5k", "train").dataset.tensors
    x, _ = load_dataset("mnist5k", "test").dataset.tensors
    noise = torch.rand(x[:500].shape, generator=torch.Generator().manual_seed(0)) - 0.5
    return model, ref_x[:300], ref_y[:300], x[:500], (x[:500] + noise).clamp(0, 1)


def test_the_paper_detectors_and_baselines_are_registered():
    assert set(list_detectors()) == {"decision-logreg", "decision-gbm", "kd-bu", "lid", "mahalanobis"}
    assert list_detectors("decision-*") == ["decision-gbm", "decision-logreg"]


@pytest.mark.parametrize("name", list_detectors())
def test_detector_separates_clean_from_noisy_images(shipped, name):
    model, ref_x, ref_y, clean, noisy = shipped
    det = create_detector(name, model, ref_x, ref_y)
    assert det.name == name and json.loads(json.dumps(det.params)) == det.params
    assert det.fit(clean[:200], noisy[200:400]) is det
    held_out = torch.cat([clean[400:], noisy[:100]])  # images the detector has not seen
    scores = det.score(held_out)
    assert scores.shape == (200,) and ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc_score(np.r_[np.zeros(100), np.ones(100)], scores) > 0.9
    np.testing.assert_array_equal(det.score(held_out), scores)  # deterministic
    features = det.features(clean[:10])
    assert features.shape == (10, len(det.feature_names)) and np.isfinite(features).all()
    assert not model.training
    assert not any(m._forward_hooks for m in model.modules() if isinstance(m, GatedConv))
    assert not model.fc._forward_pre_hooks


def test_an_unknown_detector_or_option_is_named_with_the_known_ones(shipped):
    model, ref_x, ref_y, *_ = shipped
    with pytest.raises(DetectorError, match="unknown detector 'odin'; known: decision-gbm, decision-logreg, kd-bu"):
        create_detector("odin", model, ref_x, ref_y)
    with pytest.raises(DetectorError, match="unknown option.*bw; known: bandwidth, dropout"):
        create_detector("kd-bu", model, ref_x, ref_y, bw=1.0)


def test_scoring_before_fitting_says_to_fit(shipped):
    model, ref_x, ref_y, clean, _ = shipped
    with pytest.raises(DetectorError, match=r"not fitted; call fit\(x_clean, x_adv\)"):
        create_detector("decision-logreg", model, ref_x, ref_y).score(clean[:4])


def test_decision_detectors_need_gated_layers(shipped):
    _, ref_x, ref_y, *_ = shipped
    ungated = create_model("small_cnn", gated=False, in_channels=1).eval()
    with pytest.raises(DetectorError, match="no gated layer"):
        create_detector("decision-logreg", ungated, ref_x, ref_y)
