"""`gatescope train` and `gatescope analyze` under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEFAULT_RUN, REPO

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # one thread per process on 2 cores


def _gatescope(*args: str, processes: int = 1, timeout: int = 600) -> str:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    done = subprocess.run([*launcher, "-m", "app.cli", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_training_under_torchrun_with_two_processes_converges(tmp_path):
    from models import load_run

    out = _gatescope("train", str(tmp_path / "ddp"), "--pretrain-epochs", "3", "--finetune-epochs", "1",
                     "--noise-free-epochs", "0", "--no-progress", processes=2)
    assert out.count("mean MACs ratio") == 3  # rank 0 alone reports the three phases
    log = [json.loads(line) for line in (tmp_path / "ddp" / "pretrained" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]  # one writer: no line twice
    assert log[-1]["train_loss"] < log[0]["train_loss"] and log[-1]["test_acc"] >= 0.9
    for phase in ("pretrained", "baseline", "dynamic"):
        run = load_run(tmp_path / "ddp" / phase)
        assert run.meta.training["processes"] == 2 and run.meta.metrics["test_images"] == 1000
    assert load_run(tmp_path / "ddp" / "dynamic").meta.metrics["test_accuracy"] >= 0.9


def test_analysis_under_torchrun_equals_one_process_row_for_row(tmp_path):
    from analysis.store import AnalysisStore
    from models import load_run

    args = ["--limit", "600", "--attacks", "fgsm", "pgd", "--detectors", "decision-logreg", "--no-adaptive",
            "--compute-eps", "8", "--compute-limit", "200",  # one budget on 200 images: the same code, a third of the time
            "--no-map"]  # rank 0 alone fits it, as one process does; each fit compiles UMAP afresh (20 s)
    stores = {}
    for processes in (1, 2):
        run = tmp_path / f"p{processes}"
        shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("analysis", "speed.json"))
        _gatescope("analyze", str(run), *args, processes=processes)
        stores[processes] = AnalysisStore(load_run(run))
    one, two = stores[1], stores[2]
    assert one.table("clean", "rows").equals(two.table("clean", "rows"))  # same rows, same order
    np.testing.assert_allclose(one.array("clean", "log_probs"), two.array("clean", "log_probs"), atol=1e-5)
    for name in ("attack-fgsm", "attack-pgd"):  # pgd: 3 batches of 250 sources, shared by the 2 processes
        a, b = one.table(name, "rows"), two.table(name, "rows")
        assert list(a["source"]) == list(b["source"]) and len(a) > 500
        np.testing.assert_allclose(one.array(name, "x_adv"), two.array(name, "x_adv"), atol=1e-5)
        np.testing.assert_allclose(one.array(name, "log_probs"), two.array(name, "log_probs"), atol=1e-4)
    assert set(two.names()) == {"clean", "attack-fgsm", "attack-pgd", "detection", "detection-fgsm", "detection-pgd",
                                "compute"}  # the audit's per-attack parts: rank 0 stores them as it goes
    c1, c2 = one.data("compute")["results"], two.data("compute")["results"]  # rank 0 alone runs it, as one process
    assert set(c1) == set(c2) and c1
    for budget in c1:
        assert c1[budget]["n"] == c2[budget]["n"] == 200
        for when in ("before", "after"):
            assert abs(c1[budget][when]["mean_ratio"] - c2[budget][when]["mean_ratio"]) < 1e-4
