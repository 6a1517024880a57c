"""An analysis started from the map page runs as a job: a second session sees it running, the map
appears when it ends without a restart, and a cancelled job leaves nothing behind."""

import shutil
import time

import pytest

from analysis import jobs
from analysis.analyze import AnalyzeConfig
from conftest import DEFAULT_RUN, REPO
from models import load_run

pytestmark = [pytest.mark.app, pytest.mark.slow]
PAGE = "views/feature_map.py"


@pytest.fixture
def fresh(tmp_path):
    path = tmp_path / "fresh"
    shutil.copytree(DEFAULT_RUN, path, ignore=shutil.ignore_patterns("analysis"))
    return path


def _start_button(at):
    return next(b for b in at.button if b.label == "Start the analysis")


def _rerun_until(at, done, timeout=400.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1.0)
        at.run()
        assert not at.exception
        if done(at):
            return at
    raise AssertionError("the page did not get there in time")


def test_an_analysis_started_on_the_map_page_draws_the_map_when_done(open_app, fresh):
    from streamlit.testing.v1 import AppTest

    at = open_app(fresh, page=PAGE)
    at.multiselect(key="job_attacks").set_value(["fgsm"])
    at.number_input(key="job_limit").set_value(60)
    at.multiselect(key="job_detectors").set_value(["decision-logreg", "margin"])
    at.checkbox(key="job_adaptive").set_value(False)
    _start_button(at).click().run()
    assert not at.exception
    job = jobs.latest(load_run(fresh))
    assert job.alive and job.config["attacks"] == ["fgsm"] and job.config["limit"] == 60
    assert any("Analysis running: step" in p.proto.text for p in at.get("progress"))
    assert not any(b.label == "Start the analysis" for b in at.button)  # no second job from this session

    other = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=180)  # a second browser session
    other.run()
    other.switch_page(PAGE).run()
    if jobs.status(load_run(fresh), job.id).alive:
        assert any(b.label == "Cancel the analysis" for b in other.button)
        assert not any(b.label == "Start the analysis" for b in other.button)

    _rerun_until(at, lambda at: bool(at.get("plotly_chart")))
    assert at.multiselect(key="umap_kinds").value == ["clean", "fgsm"]
    assert len(jobs.jobs(load_run(fresh))) == 1  # the second session started nothing


def test_cancel_on_the_page_leaves_no_files_and_offers_the_form_again(open_app, fresh):
    config = AnalyzeConfig(limit=400, attacks=("pgd",), detectors=("margin",), adaptive=False, compute_eps=(),
                           batch_size=50, attack_params={"pgd": {"steps": 400}})
    job = jobs.start(load_run(fresh), config)
    at = open_app(fresh, page=PAGE)
    _rerun_until(at, lambda at: jobs.status(load_run(fresh), job.id).step >= 2, timeout=120)
    next(b for b in at.button if b.label == "Cancel the analysis").click().run()
    assert not at.exception
    assert jobs.status(load_run(fresh), job.id).state == "cancelled"
    assert any("cancelled" in i.value for i in at.info)
    assert any(b.label == "Start the analysis" for b in at.button)
    from analysis.store import AnalysisStore

    assert AnalysisStore(load_run(fresh)).entries() == {}
    left = sorted(f.name for f in (fresh / "analysis").iterdir() if f.is_file())
    assert left == [".manifest.lock", "manifest.json"]  # and the jobs/ folder
