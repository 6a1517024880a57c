"""The shipped CIFAR-10 dynamic model: its recorded test accuracy and counted MACs ratio are
recomputed from the real CIFAR-10 test set (10,000 images, from ../shared/data), and the dynamic
executor computes the same outputs."""

from __future__ import annotations

import os
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

from analysis import collect, macs_summary
from analysis.datasets import DATA_ENV, load_run_dataset
from conftest import CIFAR_DIR, REPO
from models import load_run
from models.executor import DynamicExecutor

pytestmark = pytest.mark.slow
CIFAR_RUN = REPO / "assets" / "cifar10" / "dynamic"


@pytest.fixture(scope="module")
def test_split(tmp_path_factory, monkeypatch_module):
    if not CIFAR_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{CIFAR_DIR} is missing in CI; the CIFAR-10 model test needs it")
        pytest.skip(f"real CIFAR-10 not found at {CIFAR_DIR}")
    root = tmp_path_factory.mktemp("cifar10-full")
    with tarfile.open(CIFAR_DIR / "test.tar.gz") as tar:
        tar.extractall(root, filter="data")
    monkeypatch_module.setenv(DATA_ENV, f"cifar10={root}")  # the run names "cifar10" without a folder
    return load_run_dataset(load_run(CIFAR_RUN).meta, "test")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_recorded_accuracy_and_macs_are_recomputed_on_the_full_test_set(test_split):
    run = load_run(CIFAR_RUN)
    assert run.meta.dataset == "cifar10" and len(test_split) == 10_000
    out = collect(run.model, test_split, batch_size=500)
    assert out.accuracy == pytest.approx(run.meta.metrics["test_accuracy"], abs=5e-4)  # at most 5 images differ
    assert macs_summary(out)["mean"] == pytest.approx(run.meta.metrics["macs_ratio"]["mean"], abs=1e-3)
    assert out.accuracy >= 0.8 and macs_summary(out)["mean"] <= 0.6


def test_the_executor_equals_the_masked_cifar_model(test_split):
    run = load_run(CIFAR_RUN)
    x, _ = next(iter(DataLoader(test_split.dataset, batch_size=256)))
    fast = DynamicExecutor(run.model)
    with torch.no_grad():
        masked = run.model(x)
        assert (fast(x) - masked).abs().max() <= 1e-4
        assert (torch.cat([fast(x[i:i + 1]) for i in range(64)]) - masked[:64]).abs().max() <= 1e-4


@pytest.mark.app
def test_without_data_the_app_shows_the_card_and_says_what_data_it_needs(open_app, monkeypatch):
    monkeypatch.setenv(DATA_ENV, "")
    monkeypatch.delenv("GATESCOPE_ROOTS", raising=False)
    at = open_app(CIFAR_RUN)
    assert at.title[0].value == "vgg7 on cifar10"
    assert at.metric[0].label == "Test accuracy (recorded)"
    assert "cifar10 needs the folder of a CIFAR-10 copy" in at.warning[0].value
    assert any("--data cifar10=DIR" in c.value for c in at.sidebar.caption)


@pytest.mark.app
def test_the_shipped_detection_audit_is_on_the_detection_page(open_app, monkeypatch):
    monkeypatch.setenv(DATA_ENV, "")
    at = open_app(CIFAR_RUN, page="views/detection.py")
    assert not at.warning, "the shipped audit is today's format, not an older one"
    table = at.dataframe[0].value
    minimal, confident = {"deepfool", "cw_l2"}, {"pgd_margin", "cw_l2_k10", "cw_l2_k20"}
    assert set(table["attack"]) == {"fgsm", "pgd"} | minimal | confident  # the default attacks, all 10,000 images
    assert {"margin", "msp", "mahalanobis-lee", "mahalanobis", "kd-bu", "kd-bu:fixed", "lid", "lid:fixed",
            "decision-logreg", "decision-class+lp", "decision-class+margin"} <= set(table["detector"])
    assert table["ROC-AUC"].between(0, 1).all() and (table["test clean / adversarial"] != "").all()
    pgd = table[table["attack"] == "pgd"]
    assert pgd["adaptive ROC-AUC"].notna().sum() == len(pgd)  # every detector attacked adaptively
    # what the README says of the shipped audit: the margin gives minimal attacks away, not confident ones
    auc = table.set_index(["attack", "detector"])["ROC-AUC"]
    assert min(auc[a, "margin"] for a in minimal) > 0.95 and max(auc[a, "margin"] for a in confident) < 0.5
    assert any("Compute as an attack surface" in s.value for s in at.subheader)


def test_the_cifar_model_exports_to_onnx_equal_to_pytorch_in_onnxruntime(test_split, tmp_path):
    from analysis.deploy import export_run

    check = export_run(CIFAR_RUN, tmp_path / "cifar.onnx", limit=500)  # raises unless equal within 1e-4
    assert check.ok and check.images == 500 and (tmp_path / "cifar.onnx").stat().st_size > 100_000
