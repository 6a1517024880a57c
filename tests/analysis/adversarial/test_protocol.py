import numpy as np
import pytest

from sklearn.metrics import roc_auc_score

from analysis.adversarial.protocol import SourceSplit, _weighted_points, detection_metrics, labelled, tpr_at_fpr


def test_source_split_is_a_fixed_partition():
    a, b = SourceSplit.of(101, seed=4), SourceSplit.of(101, seed=4)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    assert not set(a.train) & set(a.test) and len(a.train) + len(a.test) == 101
    train, test = a.sides(np.array([a.train[0], a.test[0], a.train[1]]))
    assert train.tolist() == [True, False, True] and test.tolist() == [False, True, False]


def test_metrics_of_a_perfect_and_a_blind_detector():
    labels = np.r_[np.zeros(200), np.ones(200)].astype(int)
    perfect = detection_metrics(labels, labels * 0.9 + 0.05, n_boot=100)
    assert perfect["auc"] == 1.0 and perfect["tpr_at_5fpr"] == 1.0 and perfect["accuracy"] == 1.0
    blind = detection_metrics(labels, np.random.default_rng(0).random(400), n_boot=200)
    assert 0.4 < blind["auc"] < 0.6
    assert blind["auc_ci"][0] < 0.5 < blind["auc_ci"][1]
    assert blind["n_clean"] == blind["n_adversarial"] == 200


def test_tpr_at_fpr_on_a_hand_case():
    labels = np.array([0] * 20 + [1] * 4)
    scores = np.r_[np.arange(20) / 20, [0.99, 0.97, 0.5, 0.1]]  # one clean score (0.95) above two positives
    assert tpr_at_fpr(labels, scores, 0.05) == 0.5  # at 1/20 FPR: 0.99, 0.97 and the clean 0.95 pass


def test_nan_scores_and_single_class_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="both clean and adversarial"):
        detection_metrics(np.zeros(5, int), np.random.default_rng(0).random(5))


def test_labelled_stacks_clean_before_adversarial():
    x, y = labelled(np.zeros((2, 3)), np.ones((1, 3)))
    assert x.shape == (3, 3) and y.tolist() == [0, 0, 1]


def test_confusion_at_a_threshold_matches_counting_directly():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(300), np.ones(200)].astype(int)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    m = detection_metrics(labels, scores, n_boot=20)
    from analysis.adversarial.protocol import confusion_at

    assert len(m["fpr"]) <= 200 + 101 < 500  # thinned (500 distinct scores), yet exact on the slider's grid
    for t in np.linspace(0, 1, 101):
        c = confusion_at(m, t)
        assert c["adversarial flagged"] == int(((scores >= t) & (labels == 1)).sum())
        assert c["clean flagged"] == int(((scores >= t) & (labels == 0)).sum())
        assert c["adversarial flagged"] + c["adversarial missed"] == 200


def test_resampled_metrics_equal_sklearn_on_the_resampled_rows():
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(150), np.ones(90)].astype(int)
    scores = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.25), 0, 1), 2)  # many ties, some at 0.5
    draws = [rng.integers(0, len(labels), len(labels)) for _ in range(30)]
    counts = np.stack([np.bincount(d, minlength=len(labels)) for d in draws])
    fast = _weighted_points(labels, scores, counts)
    for row, idx in zip(fast, draws):
        y, s = labels[idx], scores[idx]
        assert row[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert row[1] == pytest.approx(tpr_at_fpr(y, s), abs=1e-12)
        assert row[2] == pytest.approx(((s >= 0.5) == y).mean(), abs=1e-12)
