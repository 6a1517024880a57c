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
    DetectorError, class_gaussians, create_detector, detector_class, kd_log_density, lid_estimate, lid_mle, list_detectors,
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
    assert float(lid_mle(torch.tensor([[4.0, 1.0, 2.0]]))[0]) == pytest.approx(3 / np.log(8))


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
    lid = lid_estimate(points, points, k=10, exclude=itself).numpy()
    by_hand = [float(lid_estimate(points[i:i + 1], torch.cat([points[:i], points[i + 1:]]), k=10)[0]) for i in range(60)]
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
    scores = mahalanobis_scores(torch.from_numpy(points), torch.from_numpy(means), torch.from_numpy(np.diag(1 / sigma**2)))
    np.testing.assert_allclose(scores.numpy(), -by_hand)


def test_mahalanobis_separates_a_shifted_gaussian_from_the_classes():
    rng = np.random.default_rng(4)
    cov = np.cov(rng.standard_normal((6, 40)))  # a shared, non-diagonal covariance
    centres = rng.standard_normal((3, 6)) * 4
    labels = rng.integers(0, 3, 1500)
    features = centres[labels] + rng.multivariate_normal(np.zeros(6), cov, 1500)
    means, precision = class_gaussians(features[:1000], labels[:1000])
    np.testing.assert_allclose(means, centres, atol=0.3)
    means, precision = torch.from_numpy(means), torch.from_numpy(precision)
    inside = mahalanobis_scores(torch.from_numpy(features[1000:]), means, precision).numpy()
    shifted = mahalanobis_scores(torch.from_numpy(rng.multivariate_normal(np.full(6, 3.0), cov, 500)), means, precision).numpy()
    assert roc_auc_score(np.r_[np.zeros(500), np.ones(500)], -np.r_[inside, shifted]) > 0.95


# ---------------------------------------------------------------------------------------------
# Kernel density and Bayesian uncertainty


def test_kernel_density_is_the_mean_of_gaussians_and_higher_at_a_training_point():
    rng = np.random.default_rng(5)
    reference = rng.standard_normal((300, 8))
    points = np.r_[reference[:5], reference[:5] + 10.0]  # training points, then far away
    log_density = kd_log_density(torch.from_numpy(points), torch.from_numpy(reference), bandwidth=1.2).numpy()
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
        off = mc_dropout_uncertainty(features, head, p=0.0, samples=20, seed=0).numpy()
        on = mc_dropout_uncertainty(features, head, p=0.5, samples=20, seed=0).numpy()
        again = mc_dropout_uncertainty(features[:7], head, p=0.5, samples=20, seed=0).numpy()
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
    assert {"decision-logreg", "decision-gbm", "kd-bu", "lid", "mahalanobis", "mahalanobis-lee", "msp",
            "margin"} <= set(list_detectors())
    assert list_detectors("decision-*") == ["decision-class", "decision-class+lp", "decision-class+margin",
                                            "decision-gbm", "decision-logreg"]


TRAINED = [n for n in list_detectors() if "no training" not in detector_class(n).family]


@pytest.mark.parametrize("name", TRAINED)  # msp and margin: noise makes this model *more* confident
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
    with pytest.raises(DetectorError, match="unknown detector 'odin'; known: decision\\+margin, decision-class"):
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


@pytest.mark.parametrize("name", [n for n in list_detectors() if detector_class(n).differentiable])
def test_the_differentiable_score_is_the_score_and_has_gradients(shipped, name):
    from scipy.special import expit

    model, ref_x, ref_y, clean, noisy = shipped
    det = create_detector(name, model, ref_x, ref_y).fit(clean[:100], noisy[100:200])
    x = torch.cat([clean[200:205], noisy[:5]]).requires_grad_()
    logit = det.torch_logit(x)
    np.testing.assert_allclose(expit(logit.detach().numpy()), det.score(x.detach()), rtol=1e-5, atol=1e-7)
    grad, = torch.autograd.grad(logit.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_a_fresh_copy_shares_the_reference_and_forgets_the_fit(shipped):
    model, ref_x, ref_y, clean, noisy = shipped
    det = create_detector("kd-bu", model, ref_x, ref_y).fit(clean[:100], noisy[100:200])
    new = det.fresh()
    assert new._ref is det._ref and new.validation is None
    with pytest.raises(DetectorError, match="not fitted"):
        new.score(clean[:2])
    new.params["bandwidth"] = -1.0
    assert det.params["bandwidth"] > 0  # its own parameters


# ---------------------------------------------------------------------------------------------
# Hyperparameters chosen on validation, never on the test side


def _recomputed_validation_auc(det, clean, noisy):
    """The validation AUC of ``det``'s current parameters, recomputed from the same split."""
    from analysis.adversarial.detector_base import _split, validation_auc

    fit, val = _split(len(clean), 0)
    fc, fa = det.features(clean), det.features(noisy)
    return validation_auc(det._new_classifier(), (fc[fit], fa[fit]), (fc[val], fa[val]))


def test_kd_bandwidth_is_the_best_on_validation(shipped):
    model, ref_x, ref_y, clean, noisy = shipped
    det = create_detector("kd-bu", model, ref_x, ref_y).fit(clean[:150], noisy[:150])
    aucs = det.params["bandwidth_auc"]
    assert det.params["bandwidth"] == float(max(aucs, key=aucs.get))
    assert _recomputed_validation_auc(det, clean[:150], noisy[:150]) == pytest.approx(max(aucs.values()))
    fixed = create_detector("kd-bu", model, ref_x, ref_y, bandwidth=0.5).fit(clean[:150], noisy[:150])
    assert fixed.params["bandwidth"] == 0.5 and "bandwidth_auc" not in fixed.params


def test_lid_k_and_minibatch_are_the_best_on_validation(shipped):
    model, ref_x, ref_y, clean, noisy = shipped
    det = create_detector("lid", model, ref_x, ref_y).fit(clean[:100], noisy[:100])
    grid = det.params["grid_auc"]
    best = max(grid, key=grid.get)
    assert best == f"k={det.params['k']},batch={det.params['ref_batch']}"
    assert len(grid) == 4 * 2  # k in 10..40; minibatches 100 and 200 (300 reference images)
    assert _recomputed_validation_auc(det, clean[:100], noisy[:100]) == pytest.approx(grid[best])


# ---------------------------------------------------------------------------------------------
# Confidence: no training on attacks


def test_confidence_detectors_never_learn_from_the_attacks(shipped):
    from analysis.adversarial.confidence import logit_margin

    model, ref_x, ref_y, clean, noisy = shipped
    a = create_detector("margin", model, ref_x, ref_y).fit(clean[:200], noisy[:100])
    b = create_detector("margin", model, ref_x, ref_y).fit(clean[:200], clean[300:310])
    np.testing.assert_array_equal(a.score(clean[200:300]), b.score(clean[200:300]))
    with torch.no_grad():
        margins = logit_margin(model(clean[200:300])).numpy()
    scores = a.score(clean[200:300])
    order = np.argsort(margins)
    assert (np.diff(scores[order]) <= 1e-12).all()  # smaller margin, higher score
    assert (a.score(clean[:200]) >= 0.5).mean() == pytest.approx(0.05, abs=0.01)  # 5% of clean flagged


def test_the_margin_detects_inputs_that_stop_at_the_boundary(shipped):
    from analysis.adversarial.attacks import create_attack

    model, ref_x, ref_y, clean, _ = shipped
    y = model(clean[:120]).argmax(1)
    result = create_attack("deepfool", model)(clean[:120], y)
    adv = result.x_adv[result.success]
    det = create_detector("margin", model, ref_x, ref_y).fit(clean[:60], adv[:40])
    scores = det.score(torch.cat([clean[60:120], adv[40:]]))
    assert roc_auc_score(np.r_[np.zeros(60), np.ones(len(adv) - 40)], scores) > 0.95


# ---------------------------------------------------------------------------------------------
# Class-conditional decision statistics


def test_class_statistics_are_zero_distance_at_the_class_mean_and_count_surprise():
    from analysis.adversarial.decision import class_statistics

    # two classes, one gate of three actions
    mean = torch.tensor([[[-0.1, -3.0, -3.0]], [[-3.0, -0.1, -3.0]]], dtype=torch.float64)  # (C, L, K)
    var = torch.ones_like(mean)
    freq = torch.tensor([[[0.8, 0.1, 0.1]], [[0.1, 0.8, 0.1]]], dtype=torch.float64)
    stats = {"mean": mean, "var": var, "log_freq": freq.log()}
    lp = torch.log_softmax(torch.tensor([[[5.0, 0.0, 0.0]]], dtype=torch.float64), dim=2)  # action 0, confidently
    at_mean = class_statistics(mean[:1], torch.tensor([0]), stats)
    assert at_mean[0, 0] == 0 and at_mean[0, 2] == 0  # distance to its own class
    assert at_mean[0, 3] == pytest.approx(((mean[0] - mean[1]) ** 2).mean().item())  # to the other class
    as_0, as_1 = class_statistics(lp, torch.tensor([0]), stats), class_statistics(lp, torch.tensor([1]), stats)
    p = lp.exp()[0, 0]
    assert as_0[0, 1] == pytest.approx(-(p * freq[0, 0].log()).sum().item())
    assert as_1[0, 1] > as_0[0, 1]  # action 0 is surprising for class 1


@pytest.mark.parametrize("name", list_detectors())
def test_scoring_precomputed_features_is_scoring(shipped, name):
    model, ref_x, ref_y, clean, noisy = shipped
    det = create_detector(name, model, ref_x, ref_y).fit(clean[:60], noisy[60:120])
    x = torch.cat([clean[200:210], noisy[:10]])
    np.testing.assert_array_equal(det.score_features(det.features(x)), det.score(x))
    assert not any(k.endswith("_auc") for k in det.feature_params())


@pytest.mark.parametrize("name", ["decision-logreg", "kd-bu", "lid", "mahalanobis-lee"])
def test_the_audits_clean_scores_are_each_images_own_whatever_sets_share_it(shipped, name):
    """The audit caches clean features per image across attacks' test sides, which overlap."""
    from analysis.adversarial.audit import _Scores

    model, ref_x, ref_y, clean, noisy = shipped
    det = create_detector(name, model, ref_x, ref_y).fit(clean[:60], noisy[60:120])
    scores = _Scores()
    first, second = np.arange(200, 230), np.r_[np.arange(250, 220, -1), [205, 207]]  # overlapping, reordered
    for sources in (first, second, first):
        np.testing.assert_allclose(scores.clean(name, det, clean, sources), det.score(clean[torch.from_numpy(sources)]),
                                   rtol=1e-5, atol=1e-6)


def test_lid_finds_exactly_the_reference_images_among_scored_ones(shipped):
    model, ref_x, ref_y, clean, _ = shipped
    det = create_detector("lid", model, ref_x, ref_y, k=10, ref_batch=100)
    ref = det._ref_inputs.view(-1, *ref_x.shape[1:])
    nudged = ref[3].clone()
    nudged.view(-1)[200] = torch.nextafter(nudged.view(-1)[200], torch.tensor(2.0))  # one pixel, one ulp
    x = torch.cat([ref[[7, 0, 7]], clean[:3], nudged[None]])
    brute = (x.flatten(1)[:, None, :] == det._ref_inputs[None]).all(-1)
    assert torch.equal(det._itself(x), brute)
    assert det._itself(x).sum(1).tolist()[:3] == [1, 1, 1] and not det._itself(x)[-1].any()


def test_lid_neighbour_distances_are_exact_even_for_near_duplicates():
    from analysis.adversarial.baselines import _nearest

    g = torch.Generator().manual_seed(0)
    ref = torch.relu(torch.randn(300, 2000, generator=g)) * 30  # large norms: the matmul's rounding is largest
    points = torch.cat([ref[:4] + 1e-7 * torch.randn(4, 2000, generator=g), ref[4:6],
                        torch.relu(torch.randn(40, 2000, generator=g)) * 30]).requires_grad_()
    exclude = torch.zeros(46, 300, dtype=torch.bool)
    exclude[4, 4] = True  # a point that is itself a reference image
    exact = torch.cdist(points.double(), ref.double(), compute_mode="donot_use_mm_for_euclid_dist")
    exact = exact.masked_fill(exclude, float("inf")).topk(20, dim=1, largest=False).values
    ours = _nearest(points, ref, 20, exclude)
    np.testing.assert_allclose(ours.detach().numpy()[:4, 0], exact.detach().numpy()[:4, 0], rtol=1e-6)  # ~1e-7 * sqrt(2000)
    np.testing.assert_allclose(ours.detach().numpy(), exact.detach().numpy(), rtol=1e-9, atol=1e-150)
    assert ours[5, 0] == torch.finfo(torch.float64).tiny ** 0.5  # an exact duplicate not excluded: distance 0
    ours.sum().backward()
    assert torch.isfinite(points.grad).all()
