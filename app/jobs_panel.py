"""Where a page needs analysis that is not stored: start it from the browser and watch it run.

The work runs as a separate process (:mod:`analysis.jobs`); this panel only starts, polls and
cancels it. Every session on the same run sees the same running job.
"""

from __future__ import annotations

import streamlit as st

from analysis import jobs
from analysis.adversarial.attacks import list_attacks
from analysis.adversarial.detectors import list_detectors
from analysis.analyze import AnalyzeConfig
from analysis.store import AnalysisStore
from models import Run


def require_analysis(run: Run, *, stored: bool, what: str) -> None:
    """Let the page go on only when its analysis is ``stored`` and no job is writing the run's
    analysis (a page would otherwise show it half done); else show the running job, or say that
    ``what`` needs the analysis and offer a form that starts it, and stop the page."""
    job = jobs.latest(run)
    if job is not None and job.alive:
        st.info(f"This page shows {what}, from the run's analysis, which is being computed now.")
        _progress(str(run.path), job.id)
        st.stop()
    if stored:
        return
    if AnalysisStore(run).stale():
        st.warning(f"The stored analysis of this run was computed from **other weights** (the weights file changed "
                   f"since), so it is not shown. Recompute it below to see {what}.")
    else:
        st.info(f"This page shows {what}, which come from the run's analysis (attacks on its test images, decision "
                f"features, the audited detectors and the map). It is not stored for this run yet: compute it here.")
    if job is not None and job.state == "failed":
        st.error(f"The last analysis failed: {job.message}")
        with st.expander("Its log"):
            st.code(jobs.log_text(run, job.id)[-8000:] or "(empty)", language=None)
    elif job is not None and job.state == "cancelled":
        st.info("The last analysis was cancelled; nothing it had written was kept.")
    _form(run)
    st.stop()


def _form(run: Run) -> None:
    defaults = AnalyzeConfig()
    with st.form("analysis_job"):
        st.markdown("**Compute the analysis** (the same work as `gatescope analyze`, with its defaults)")
        attacks = st.multiselect("Attacks", list_attacks(), default=list(defaults.attacks), key="job_attacks",
                                 help="only correctly classified inputs are attacked; none: decision features and "
                                      "the map only")
        cols = st.columns(3)
        limit = cols[0].number_input("Images (0: the whole test split)", 0, None, defaults.limit, 100, key="job_limit",
                                     help="analyse only the first N test images: a quicker first look")
        adaptive = cols[1].checkbox("Adaptive attacks on every detector", defaults.adaptive, key="job_adaptive")
        adaptive_limit = cols[2].number_input("Inputs per adaptive attack", 10, None, defaults.adaptive_limit, 100,
                                              key="job_adaptive_limit")
        detectors = st.multiselect("Detectors", list_detectors(), default=list(defaults.detectors), key="job_detectors")
        st.caption("On a 2-core CPU the shipped MNIST model takes about 10 minutes with every attack, a CIFAR-10 "
                   "model hours on its 10,000 test images: limit the images for a first look.")
        if st.form_submit_button("Start the analysis", type="primary"):
            if attacks and not detectors:
                st.error("Choose at least one detector, or no attacks (decision features and the map only).")
                return
            config = AnalyzeConfig(attacks=tuple(attacks), limit=int(limit), detectors=tuple(detectors),
                                   adaptive=adaptive, adaptive_limit=int(adaptive_limit))
            jobs.start(run, config)
            st.rerun()


@st.fragment(run_every=1.0)
def _progress(path: str, jid: str) -> None:
    """The job's progress, redrawn every second; the whole page reruns when it ends."""
    from app.state import get_run

    run = get_run(path)
    job = jobs.status(run, jid)
    if job is None or not job.alive:  # the stored results are read afresh (the caches key on the manifest)
        st.rerun(scope="app")
    name = job.steps[job.step - 1] if job.step else "starting"
    st.progress(job.step / len(job.steps), text=f"Analysis running: step {max(job.step, 1)} of {len(job.steps)}, {name}")
    if job.total:
        st.progress(min(job.done / job.total, 1.0), text=f"{job.done:,} of {job.total:,} {job.unit}")
    left = job.step_left_s
    st.caption(f"Elapsed {_duration(job.elapsed)}"
               + (f"; this step about {_duration(left)} more" if left is not None else "")
               + f". Last message: {job.message}")
    if st.button("Cancel the analysis", key="job_cancel"):
        with st.spinner("Cancelling..."):
            jobs.cancel(run, jid)
        st.rerun(scope="app")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
