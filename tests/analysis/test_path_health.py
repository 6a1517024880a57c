"""Path health against known answers, and its per-epoch record in the training log."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Subset

from analysis import collect, load_dataset, path_health_table
from analysis.path_health import (
    LOG_FIELDS, class_action_information, class_entropy, decision_entropy, epoch_record, health_over_epochs,
    transition_counts, utilisation_ratio,
)
from analysis.trainer import Phase, run_phase
from analysis.training import adamw
from models import gated_convs, load_run
from models.files import dumps_json


def test_uniform_log_probs_have_entropy_log2_k_and_one_hot_ones_zero():
    k = 8
    uniform = np.full((5, 3, k), -np.log(k), np.float32)
    np.testing.assert_allclose(decision_entropy(uniform), np.log2(k), rtol=1e-6)
    one_hot = torch.log_softmax(torch.tensor([[[60.0] + [0.0] * (k - 1)]]), -1).numpy()  # (1, 1, K)
    assert decision_entropy(one_hot)[0, 0] < 1e-20
    exact = np.full((1, 1, k), -np.inf)
    exact[0, 0, 2] = 0.0  # log p of -inf: 0 log 0 counts as 0, not NaN
    assert decision_entropy(exact)[0, 0] == 0.0


def test_an_action_that_copies_the_label_carries_all_of_h_class():
    labels = np.repeat(np.arange(5), [10, 20, 30, 5, 35])
    paths = np.stack([labels + 2, np.zeros_like(labels)], 1)  # gate 0 names the class, gate 1 never varies
    info = class_action_information(paths, labels)
    assert info[0] == pytest.approx(class_entropy(labels)) and info[1] == 0.0
    table = path_health_table(np.zeros((len(labels), 2, 7)), paths, labels)
    assert table["mi_share"].tolist() == pytest.approx([1.0, 0.0])


def test_independent_actions_carry_no_class_information():
    i = np.arange(4 * 4 * 25)
    labels, actions = i % 4, (i // 4) % 4  # every (class, action) pair equally often: exactly independent
    assert class_action_information(actions[:, None], labels)[0] == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    labels, actions = rng.integers(0, 10, 20_000), rng.integers(0, 8, 20_000)
    # the plug-in estimate is biased upward by about (C-1)(A-1) / (2 N ln 2) = 0.0023 bits here
    assert class_action_information(actions[:, None], labels)[0] < 0.01


def test_mutual_information_matches_scikit_learns():
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 500)
    paths = np.stack([(labels + rng.integers(0, 3, 500)) % 9, rng.integers(0, 9, 500)], 1)
    expected = [mutual_info_score(labels, paths[:, l]) / math.log(2) for l in range(2)]  # nats -> bits
    np.testing.assert_allclose(class_action_information(paths, labels), expected, rtol=1e-9)


def test_one_action_always_chosen_is_utilisation_k_and_even_use_is_one():
    k = 6
    paths = np.stack([np.full(60, 4), np.arange(60) % k], 1)
    np.testing.assert_allclose(utilisation_ratio(paths, k), [k, 1.0])
    table = path_health_table(np.log(np.eye(k)[paths] + 1e-30), paths, np.arange(60) % 3)
    assert table["actions_used"].tolist() == [1, k] and table["entropy"].max() < 1e-6
    assert table["entropy_max"].tolist() == pytest.approx([np.log2(k)] * 2)


def test_transition_counts_of_a_hand_built_path_array():
    paths = np.array([[0, 1, 2], [0, 1, 0], [2, 1, 0], [0, 2, 0]])
    expected = np.zeros((3, 3), int)
    expected[0, 1], expected[2, 1], expected[0, 2] = 2, 1, 1
    np.testing.assert_array_equal(transition_counts(paths, 0, 3), expected)
    later = transition_counts(paths, 1, 3)
    assert later[1, 2] == 1 and later[1, 0] == 2 and later[2, 0] == 1 and later.sum() == 4
    with pytest.raises(ValueError, match="layer is 2; expected a gate followed by another, 0 to 1"):
        transition_counts(paths, 2, 3)


def test_the_epoch_record_is_standard_json_and_empty_when_ungated():
    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(5), size=(40, 3))).astype(np.float32)
    record = epoch_record(log_probs, log_probs.argmax(2), np.zeros(40, int))  # one class: H(class) = 0
    assert set(record) == set(LOG_FIELDS) and all(len(v) == 3 for v in record.values())
    assert json.loads(dumps_json(record, indent=None)) == record
    assert epoch_record(np.zeros((40, 0, 0)), np.zeros((40, 0), int), np.zeros(40, int)) == {}


def test_health_over_epochs_reads_recording_logs_and_is_empty_for_older_ones():
    old = pd.DataFrame([{"phase": "dynamic", "epoch": 1, "test_acc": 0.9}])
    assert health_over_epochs(old).empty and health_over_epochs(pd.DataFrame()).empty
    new = pd.DataFrame([{"phase": "dynamic", "epoch": e, "test_entropy": [1.0, 2.0], "test_mi": [0.1, 0.2],
                         "test_utilisation": [3.0, 4.0 + e]} for e in (1, 2)])
    history = health_over_epochs(new)
    assert len(history) == 4 and history.query("epoch == 2 and gate == 1")["utilisation"].item() == 6.0


@pytest.fixture(scope="module")
def splits():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    return train.with_dataset(Subset(train.dataset, range(96))), test.with_dataset(Subset(test.dataset, range(48)))


def test_training_logs_path_health_per_epoch_of_the_data_it_evaluates(tiny_run, splits, tmp_path):
    run = load_run(tiny_run)  # gated small_cnn, K = 3
    model = run.model
    phase = Phase(name="dynamic", model=model, optimizer=adamw(model, 1e-3, 0.0, 1e-2), epochs=2, seed=0,
                  config={"quick": 1}, meta=run.meta, eval_batch_size=48)
    run_phase(phase, *splits, tmp_path / "trained", batch_size=32, progress=False, log=lambda s: None)
    lines = [json.loads(s) for s in (tmp_path / "trained" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    gates = len(gated_convs(model))
    for r in lines:
        assert set(LOG_FIELDS) <= set(r) and all(len(r[key]) == gates for key in LOG_FIELDS)
        assert all(math.isfinite(v) for key in LOG_FIELDS for v in r[key])
        assert all(1.0 <= u <= 3.0 for u in r["test_utilisation"])
    # the last line is the path health of the saved weights on the test split
    out = collect(load_run(tmp_path / "trained").model, splits[1])
    assert lines[-1]["test_entropy"] == pytest.approx(list(decision_entropy(out.log_probs).mean(0)), abs=1e-5)
    assert lines[-1]["test_mi"] == pytest.approx(list(class_action_information(out.paths, out.labels)), abs=1e-5)
