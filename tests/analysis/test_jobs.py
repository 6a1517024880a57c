"""Analysis jobs: a separate process that reports its steps, is found again instead of started
twice, fails with a readable log, and when cancelled leaves the store as it was."""

import json
import shutil
import time

import pytest

from analysis import jobs
from analysis.analyze import AnalyzeConfig, steps
from analysis.store import AnalysisStore
from conftest import DEFAULT_RUN
from models import load_run

pytestmark = pytest.mark.slow
QUICK = AnalyzeConfig(limit=60, attacks=("fgsm",), detectors=("decision-logreg", "margin"), simplified=False,
                      reference=200, n_boot=20, adaptive=False, compute_eps=())
# long enough to cancel in the middle: PGD with many steps on 400 images
SLOW = AnalyzeConfig(limit=400, attacks=("pgd",), detectors=("margin",), simplified=False, adaptive=False,
                     compute_eps=(), batch_size=50, attack_params={"pgd": {"steps": 400}})


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "dynamic"
    shutil.copytree(DEFAULT_RUN, path, ignore=shutil.ignore_patterns("analysis"))
    return load_run(path)


def _wait(run, jid, until, timeout=300.0):
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = jobs.status(run, jid)
        seen.append(status)
        if until(status):
            return status, seen
        time.sleep(0.2)
    raise AssertionError(f"job {jid} did not get there in {timeout} s; last status {seen[-1]}; log:\n"
                         + jobs.log_text(run, jid))


def _files(run):
    """The store's files and their contents, the jobs folder aside."""
    folder = AnalysisStore(run).path
    if not folder.is_dir():
        return {}
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}


def test_a_job_runs_the_analysis_in_its_own_process_and_reports_every_step(run):
    first = jobs.start(run, QUICK)
    again = jobs.start(run, QUICK)  # a second session asking for the same analysis
    assert again.id == first.id and again.alive
    spec = json.loads((run.path / "analysis" / "jobs" / f"{first.id}.json").read_text())
    final, seen = _wait(run, first.id, lambda s: s.state != "running")
    assert final.state == "done", jobs.log_text(run, first.id)
    assert final.steps == steps(QUICK) and final.step == len(final.steps)
    assert [s.step for s in seen if s] == sorted(s.step for s in seen if s)  # steps only move forward
    store = AnalysisStore(run)
    for name in ("clean", "attack-fgsm", "detection", "umap"):
        assert store.params(name) is not None, name
    assert store.params("clean") == {"split": "test", "limit": 60}
    assert len(list((run.path / "analysis" / "jobs").glob("*.json"))) == 2  # one job: its spec and progress
    assert spec["pid"] > 0 and not final.alive
    assert "attack fgsm:" in jobs.log_text(run, first.id)  # the log keeps what analyze printed
    # the same analysis again: a new job (the last one ended) that finds every step stored
    rerun, _ = _wait(run, jobs.start(run, QUICK).id, lambda s: s.state != "running")
    assert rerun.state == "done" and rerun.elapsed < final.elapsed


def test_cancel_stops_the_job_and_leaves_the_store_as_it_was(run):
    store = AnalysisStore(run)
    from analysis.analyze import analyze

    analyze(run, AnalyzeConfig(limit=30, attacks=()), log=lambda s: None)  # something stored before
    before = _files(run)
    job = jobs.start(run, SLOW)
    status, seen = _wait(run, job.id, lambda s: s.step >= 2 and bool(s.total))  # in the attack, clean saved
    assert store.params("clean") == {"split": "test", "limit": 400}  # the job's own clean entry exists now
    assert status.unit == "batches" and status.total == 8 and status.steps[status.step - 1] == "attack pgd"
    cancelled = jobs.cancel(run, job.id)
    assert cancelled.state == "cancelled" and not cancelled.alive
    assert _files(run) == before  # nothing the job wrote is left, and what was there is back
    assert store.params("clean") == {"split": "test", "limit": 30}
    assert not list(store.path.glob(".*.tmp"))


def test_a_failing_job_says_why_and_keeps_its_log(run):
    meta = json.loads((run.path / "model.json").read_text())
    meta["dataset"] = "cifar10:/nonexistent/cifar"  # same weights, data that is not there
    (run.path / "model.json").write_text(json.dumps(meta))
    run = load_run(run.path)
    job = jobs.start(run, QUICK)
    final, _ = _wait(run, job.id, lambda s: s.state != "running", timeout=120)
    assert final.state == "failed"
    assert "/nonexistent/cifar" in final.message
    assert "Traceback" in jobs.log_text(run, job.id)
    assert jobs.latest(run).id == job.id
