"""Per-input outputs kept in the run's analysis store: computed once, read afterwards, computed
afresh for other data, and never written over another weights' analysis."""

import shutil

import numpy as np
import pytest
import torch

import analysis.outputs_cache as cache
from analysis.datasets import load_run_dataset
from analysis.evaluation import collect
from analysis.store import AnalysisStore
from conftest import DEFAULT_RUN
from models import load_run, save_run


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "dynamic"
    shutil.copytree(DEFAULT_RUN, path, ignore=shutil.ignore_patterns("analysis"))
    return load_run(path)


def test_outputs_are_computed_once_then_read_from_the_store(run, monkeypatch):
    first = cache.stored_outputs(run, "test")
    expected = collect(run.model, load_run_dataset(run.meta, "test"))
    for field in ("labels", "preds", "log_probs", "paths", "active", "macs"):
        assert np.array_equal(getattr(first, field), getattr(expected, field)), field
    assert AnalysisStore(run).params("outputs-test")["images"] == 1000

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran although the outputs are stored")

    monkeypatch.setattr(cache, "collect", no_model)
    again = cache.stored_outputs(load_run(run.path), "test")  # a later launch
    assert np.array_equal(again.log_probs, first.log_probs) and np.array_equal(again.macs, first.macs)
    assert again.ungated_macs == first.ungated_macs and again.accuracy == first.accuracy


def test_other_data_under_the_same_name_is_evaluated_afresh(run, monkeypatch):
    cache.stored_outputs(run, "test")
    digest = cache.data_digest
    assert digest(load_run_dataset(run.meta, "test")) != digest(load_run_dataset(run.meta, "train"))
    ran = []
    monkeypatch.setattr(cache, "data_digest", lambda split: "another copy")
    monkeypatch.setattr(cache, "collect", lambda *a, **k: ran.append(1) or collect(*a, **k))
    cache.stored_outputs(run, "test")
    assert ran == [1]


def test_a_store_of_other_weights_is_left_alone(run):
    cache.stored_outputs(run, "test")
    with torch.no_grad():
        run.model.fc.bias.add_(0.01)
    save_run(run.path, run.model, run.meta)
    retrained = load_run(run.path)
    out = cache.stored_outputs(retrained, "test")
    assert len(out.labels) == 1000
    assert AnalysisStore(retrained).stale()  # still says the stored analysis is another weights'
