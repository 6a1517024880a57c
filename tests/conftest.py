"""Shared fixtures: tiny gated networks, tiny runs and a small real CIFAR-10 extract."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CIFAR_DIR = REPO.parent / "shared" / "data" / "cifar10-jpeg"
DEFAULT_RUN = REPO / "assets" / "mnist5k" / "dynamic"
BASELINE_RUN = REPO / "assets" / "mnist5k" / "baseline"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """ImageFolder-layout CIFAR-10 extract: 20 train and 10 test JPEGs per class."""
    if not CIFAR_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{CIFAR_DIR} is missing in CI; the ImageFolder tests need it")
        pytest.skip(f"real CIFAR-10 not found at {CIFAR_DIR}")
    root = tmp_path_factory.mktemp("cifar10")
    for split, per_class in (("train", 20), ("test", 10)):
        counts: dict[str, int] = {}
        with tarfile.open(CIFAR_DIR / f"{split}.tar.gz") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) != 3:
                    continue
                cls = parts[1]
                if counts.get(cls, 0) >= per_class:
                    if len(counts) == 10 and all(v >= per_class for v in counts.values()):
                        break
                    continue
                counts[cls] = counts.get(cls, 0) + 1
                tar.extract(member, root, filter="data")
    return root


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    """A saved gated small_cnn run folder (untrained, K = 3) on mnist5k."""
    from models import RunMeta, build_model, save_run

    meta = RunMeta(
        arch="small_cnn", arch_args={"gated": True, "num_classes": 10, "in_channels": 1, "num_actions": 3},
        dataset="mnist5k", class_names=[str(i) for i in range(10)], input_shape=[1, 28, 28],
        mean=[0.1307], std=[0.3081], training={"seed": 0, "tau": [1.0, 0.5]}, metrics={"test_accuracy": 0.1},
    )
    path = tmp_path / "run"
    save_run(path, build_model(meta), meta)
    return path


@pytest.fixture
def expanded_gates_run(tmp_path) -> Path:
    """A small_cnn gates run learned on a network widened twofold (``--expansion 2``), with random
    gates in [0, 1] instead of learned ones (the search only reads their order)."""
    import numpy as np

    from models import RunMeta, build_model, prunable_convs, save_run

    widths = [32, 64, 128, 128, 256]  # small_cnn's [16, 32, 64, 64, 128] x 2
    meta = RunMeta(
        arch="small_cnn", arch_args={"gated": False, "num_classes": 10, "in_channels": 1, "channel_gates": True,
                                     "widths": widths},
        dataset="mnist5k", class_names=[str(i) for i in range(10)], input_shape=[1, 28, 28], mean=[0.1307],
        std=[0.3081], training={"seed": 0, "config": {"expansion": 2.0}},
    )
    model = build_model(meta)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for conv in prunable_convs(model):
            conv.gate.copy_(torch.from_numpy(rng.random(conv.gate.numel())))
    path = tmp_path / "gates-x2"
    save_run(path, model, meta)
    return path


@pytest.fixture
def open_app(monkeypatch):
    """``open_app(*runs, page=None)``: the Streamlit app (AppTest) started on ``runs`` (default:
    the shipped model), optionally switched to ``page`` (e.g. "views/pruning.py"); asserts that
    no exception was raised."""
    from streamlit.testing.v1 import AppTest

    def start(*runs, page: str | None = None) -> AppTest:
        if runs:
            monkeypatch.setenv("GATESCOPE_RUNS", os.pathsep.join(map(str, runs)))
        else:
            monkeypatch.delenv("GATESCOPE_RUNS", raising=False)
        at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=180)
        at.run()
        if page:
            at.switch_page(page).run()
        assert not at.exception
        return at

    return start


@pytest.fixture(scope="session")
def analysed_run(tmp_path_factory) -> Path:
    """A copy of the shipped run analysed on 100 test images (FGSM, DeepFool and PGD, three detectors,
    adaptive attacks on 20 inputs, the compute attack)."""
    import shutil

    from analysis.analyze import AnalyzeConfig, analyze
    from models import load_run

    path = tmp_path_factory.mktemp("analysed") / "dynamic"
    shutil.copytree(DEFAULT_RUN, path, ignore=shutil.ignore_patterns("analysis"))
    config = AnalyzeConfig(limit=100, attacks=("fgsm", "deepfool", "pgd"),
                           detectors=("decision-logreg", "mahalanobis", "margin"), simplified=False, reference=300,
                           n_boot=50, adaptive_limit=20, attack_params={"pgd": {"steps": 10, "step_size": 0.03}})
    analyze(load_run(path), config, log=lambda s: None)
    return path


# Generated hostile inputs tried by the property-based (hypothesis) tests, per area; printed at
# the end of the run and kept in pytest's cache (``pytest --cache-show gatescope/fuzz``).
FUZZ_COUNTS: dict[str, int] = {}


@pytest.fixture(scope="session")
def tried():
    """``tried(area)``: count one generated input of ``area`` (call it once per example)."""

    def count(area: str) -> None:
        FUZZ_COUNTS[area] = FUZZ_COUNTS.get(area, 0) + 1

    return count


def fuzz(examples: int):
    """Hypothesis settings of a fuzzing test: ``examples`` generated inputs, no per-example
    deadline (2 shared cores make timings noisy), large generated inputs allowed."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if FUZZ_COUNTS:
        terminalreporter.section("generated hostile inputs tried")
        for area, n in sorted(FUZZ_COUNTS.items()):
            terminalreporter.write_line(f"{area:<28} {n:>6,}")
        terminalreporter.write_line(f"{'total':<28} {sum(FUZZ_COUNTS.values()):>6,}")
        config.cache.set("gatescope/fuzz", FUZZ_COUNTS)


@pytest.fixture
def relabelled_runs(tmp_path) -> tuple[Path, Path, list]:
    """``(run_a, run_b, perms)``: two gated small_cnn run folders on mnist5k (untrained, K = 4,
    random masks with zeros, BatchNorm statistics of 500 training images so that the gates' choices
    vary with the input) computing the same function with their actions renumbered: at gate l, run
    B's action i is run A's action ``perms[l][i]`` (mask rows and decision-unit rows permuted alike)."""
    import numpy as np

    from analysis import load_dataset
    from models import RunMeta, build_model, gated_convs, save_run

    meta = RunMeta(
        arch="small_cnn", arch_args={"gated": True, "num_classes": 10, "in_channels": 1, "num_actions": 4},
        dataset="mnist5k", class_names=[str(i) for i in range(10)], input_shape=[1, 28, 28],
        mean=[0.1307], std=[0.3081], training={"seed": 0}, metrics={},
    )
    model = build_model(meta)
    rng = np.random.default_rng(0)
    perms = []
    with torch.no_grad():
        for gate in gated_convs(model):
            bank = rng.uniform(0.1, 2.0, gate.bank.weight.shape) * (rng.random(gate.bank.weight.shape) > 0.3)
            gate.bank.weight.copy_(torch.from_numpy(bank))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # a plain average over the batch below
        train = load_dataset("mnist5k", "train").dataset
        images = torch.stack([train[i][0] for i in range(500)])
        model.train()
        model(images)
        model.eval()
    save_run(tmp_path / "a", model, meta)
    with torch.no_grad():
        for gate in gated_convs(model):
            perm = rng.permutation(gate.bank.weight.shape[0])
            gate.bank.weight.copy_(gate.bank.weight[perm].clone())
            gate.decision.linear.weight.copy_(gate.decision.linear.weight[perm].clone())
            perms.append(perm)
    save_run(tmp_path / "b", model, meta)
    return tmp_path / "a", tmp_path / "b", perms


# Headless Debian Chromium, driven by Playwright, for the browser tests (one per module).
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI; .ci/run installs it")
        pytest.skip(f"Debian chromium not installed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def offered(monkeypatch) -> dict:
    """The files the page's download buttons offer, by file name (a spy on Streamlit's media store)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    files, store = {}, MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        files[filename] = path_or_data
        return store(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return files
