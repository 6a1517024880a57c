"""Analysis jobs: ``gatescope analyze`` as a separate process that a page starts, polls and cancels.

A job is one run and one :class:`~analysis.analyze.AnalyzeConfig`; its id is a digest of the
run's weights and the configuration, so a second session asking for the same analysis finds the
running job instead of starting another. Its files, in ``RUN/analysis/jobs/``:

- ``ID.json``: what to compute and what the store held before (written by :func:`start`);
- ``ID.progress.json``: written only by the job process, about twice a second: state
  ("running", "done", "failed", "cancelled"), step k of n, the current progress bar's count,
  the last log line; a job whose heartbeat stops for ``STALE_S`` died (killed, out of memory);
- ``ID.log``: everything the process printed, for when it fails.

Cancelling (SIGTERM to the job's process group) makes the process remove every store entry it
added and its temporary files before it exits, so the store is as it was before the job; a
process that does not stop within ``timeout`` is killed and the canceller cleans up.

    python -m analysis.jobs RUN_DIR JOB_ID    # what start() launches
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from models import Run, load_run
from models.files import atomic_write_json, locked, sha256_bytes

from .analyze import AnalyzeConfig, analyze, steps
from .store import LOCK, AnalysisStore

JOBS = "jobs"
STALE_S = 30.0  # a running job whose progress file is older than this has died
BEAT_S = 0.5  # how often the job process rewrites its progress file


@dataclass(frozen=True)
class JobStatus:
    """What a page shows of a job."""

    id: str
    weights: str  # the SHA-256 of the weights it analyses
    state: str  # "running", "done", "failed" or "cancelled"
    config: dict  # the AnalyzeConfig, as JSON
    step: int  # 1-based index of the current step in ``steps`` (0: not started yet)
    steps: list[str]
    done: int | None  # the current progress bar's count and total (images, batches), if any
    total: int | None
    unit: str  # what ``done`` counts
    started: float  # time.time() of the start
    updated: float  # of the last heartbeat
    bar_elapsed: float | None  # seconds the current progress bar has run
    message: str  # the last log line, or the error of a failed job

    @property
    def alive(self) -> bool:
        return self.state == "running" and time.time() - self.updated < STALE_S

    @property
    def elapsed(self) -> float:
        return (time.time() if self.alive else self.updated) - self.started

    @property
    def step_left_s(self) -> float | None:
        """Seconds the current progress bar still needs at its rate so far (None: unknown)."""
        if not self.done or not self.total or self.bar_elapsed is None or self.done >= self.total:
            return None
        return self.bar_elapsed * (self.total - self.done) / self.done


def job_id(run: Run, config: AnalyzeConfig) -> str:
    key = json.dumps({"weights": run.meta.weights_sha256, "config": _config_json(config)}, sort_keys=True)
    return sha256_bytes(key.encode())[:12]


def start(run: Run, config: AnalyzeConfig = AnalyzeConfig()) -> JobStatus:
    """Start the analysis of ``run`` with ``config`` in a new process, or return the job already
    running it (from this or another session)."""
    store = AnalysisStore(run)
    folder = _folder(run)
    with locked(store.path / LOCK):
        jid = job_id(run, config)
        if (current := status(run, jid)) is not None and current.alive:
            return current
        now = time.time()
        spec = {"id": jid, "weights": run.meta.weights_sha256, "config": _config_json(config), "created": now, "before": store.entries()}
        atomic_write_json(folder / f"{jid}.json", spec)
        _write_progress(folder, jid, _progress(spec, "running", step=0, message="starting"))
        with open(folder / f"{jid}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "analysis.jobs", str(run.path), jid], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        atomic_write_json(folder / f"{jid}.json", {**spec, "pid": proc.pid})
    threading.Thread(target=proc.wait, daemon=True).start()  # reaps the process when it ends
    return status(run, jid)


def status(run: Run, jid: str) -> JobStatus | None:
    """The job's status (None when there is no such job, or its files are unreadable)."""
    folder = _folder(run, create=False)
    try:
        spec = json.loads((folder / f"{jid}.json").read_text())
        p = json.loads((folder / f"{jid}.progress.json").read_text())
        return JobStatus(id=jid, weights=spec["weights"], state=p["state"], config=spec["config"], step=p["step"], steps=p["steps"],
                         done=p.get("done"), total=p.get("total"), unit=p.get("unit", ""), started=p["started"],
                         updated=p["updated"], bar_elapsed=p.get("bar_elapsed"), message=p.get("message", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def jobs(run: Run) -> list[JobStatus]:
    """Every job of ``run`` for its current weights, the latest first."""
    folder = _folder(run, create=False)
    found = [status(run, f.name.removesuffix(".progress.json")) for f in folder.glob("*.progress.json")]
    return sorted((j for j in found if j is not None and j.weights == run.meta.weights_sha256),
                  key=lambda j: j.started, reverse=True)


def latest(run: Run) -> JobStatus | None:
    """The running job of ``run`` if there is one, else its latest job, else None."""
    found = jobs(run)
    return next((j for j in found if j.alive), found[0] if found else None)


def log_text(run: Run, jid: str, *, tail: int = 20_000) -> str:
    """The last ``tail`` characters the job printed, progress bars reduced to their last state."""
    try:
        raw = (_folder(run, create=False) / f"{jid}.log").read_bytes()[-tail:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in raw.splitlines() if line.rsplit("\r", 1)[-1].strip())


def cancel(run: Run, jid: str, *, timeout: float = 15.0) -> JobStatus | None:
    """Stop the job; it removes what it added to the store. Returns its final status."""
    folder = _folder(run, create=False)
    try:
        spec = json.loads((folder / f"{jid}.json").read_text())
    except (OSError, ValueError):
        return None
    current = status(run, jid)
    if current is None or not current.alive or "pid" not in spec:
        return current
    try:
        os.killpg(spec["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (now := status(run, jid)) is not None and now.state != "running":
            return now
        time.sleep(0.1)
    try:  # it did not stop: kill it and clean up here
        os.killpg(spec["pid"], signal.SIGKILL)
    except ProcessLookupError:
        pass
    _roll_back(AnalysisStore(run), spec["before"], temps=".*.tmp", since=spec["created"])
    _write_progress(folder, jid, {**_read_progress(folder, jid), "state": "cancelled", "updated": time.time(),
                                  "message": "cancelled (killed); what it had written was removed"})
    return status(run, jid)


class Cancelled(BaseException):
    """Raised in the job process by SIGTERM (a BaseException, so no ``except Exception`` swallows it)."""


def run_job(run_dir: str, jid: str) -> int:
    """The job process: analyse, writing progress until it ends; returns the exit code."""
    signal.signal(signal.SIGTERM, _raise_cancelled)
    run = load_run(run_dir)
    folder = _folder(run)
    spec = json.loads((folder / f"{jid}.json").read_text())
    config = _config_from_json(spec["config"])
    names = steps(config)
    beat = _Heartbeat(folder, jid, _progress(spec, "running", step=0, message="loading"))

    def on_step(name: str) -> None:
        beat.set(step=names.index(name) + 1, message=name)

    def log(line: str) -> None:
        print(line, flush=True)
        beat.set(message=line)

    beat.start()
    try:
        analyze(run, config, log=log, step=on_step)
        beat.finish(state="done", step=len(names), message="finished")
        return 0
    except Cancelled:
        _roll_back(AnalysisStore(run), spec["before"], temps=f".*.{os.getpid()}.tmp")
        beat.finish(state="cancelled", message="cancelled; what it had written was removed")
        return 1
    except Exception as e:  # shown on the page, with the log
        traceback.print_exc()
        sys.stdout.flush()
        beat.finish(state="failed", message=f"{type(e).__name__}: {e}")
        return 1


class _Heartbeat(threading.Thread):
    """Rewrites the progress file every BEAT_S with the latest step, log line and progress bar."""

    def __init__(self, folder: Path, jid: str, progress: dict):
        super().__init__(daemon=True)
        self.folder, self.jid, self.progress = folder, jid, progress
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self._write()

    def set(self, **values) -> None:
        with self.lock:
            self.progress.update(values)

    def run(self) -> None:
        while not self.stopped.wait(BEAT_S):
            self._write()

    def finish(self, **values) -> None:
        self.stopped.set()
        self.set(**values, done=None, total=None, bar_elapsed=None)
        self._write(bars=False)

    def _write(self, bars: bool = True) -> None:
        with self.lock:
            if bars:
                self.progress.update(_current_bar())
            self.progress["updated"] = time.time()
            _write_progress(self.folder, self.jid, self.progress)


def _current_bar() -> dict:
    """The count, total and unit of the newest open tqdm progress bar in this process."""
    from tqdm import tqdm

    with tqdm.get_lock():  # the analysis thread opens and closes bars meanwhile
        bars = [b for b in list(getattr(tqdm, "_instances", [])) if not getattr(b, "disable", True) and b.total]
    if not bars:
        return {"done": None, "total": None, "unit": "", "bar_elapsed": None}
    bar = max(bars, key=lambda b: b.start_t)
    return {"done": int(bar.n), "total": int(bar.total), "unit": bar.unit if bar.unit != "it" else "batches",
            "bar_elapsed": time.time() - bar.start_t}


def _raise_cancelled(signum, frame) -> None:
    raise Cancelled()


def _roll_back(store: AnalysisStore, before: dict[str, dict], *, temps: str, since: float = 0.0) -> None:
    """Put the store's entries back as they were (``before``) and remove the temporary files
    matching ``temps`` written since ``since``. (A job process stopped by SIGTERM has removed its
    atomic writes' temporary files itself; the streamed ones carry its pid. A killed one may
    leave any: then every temporary file written since its start goes.)"""
    store.roll_back(before)
    for tmp in store.path.glob(temps):
        try:
            if tmp.stat().st_mtime >= since:
                tmp.unlink()
        except FileNotFoundError:
            pass


def _progress(spec: dict, state: str, *, step: int, message: str) -> dict:
    names = steps(_config_from_json(spec["config"]))
    return {"state": state, "step": step, "steps": names, "done": None, "total": None, "unit": "",
            "started": spec["created"], "updated": time.time(), "bar_elapsed": None, "message": message}


def _read_progress(folder: Path, jid: str) -> dict:
    return json.loads((folder / f"{jid}.progress.json").read_text())


def _write_progress(folder: Path, jid: str, progress: dict) -> None:
    atomic_write_json(folder / f"{jid}.progress.json", progress)


def _folder(run: Run, *, create: bool = True) -> Path:
    folder = AnalysisStore(run).path / JOBS
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _config_json(config: AnalyzeConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _config_from_json(values: dict) -> AnalyzeConfig:
    fields = {f.name: f for f in dataclasses.fields(AnalyzeConfig)}
    return AnalyzeConfig(**{k: tuple(v) if isinstance(v, list) and k != "attack_params" else v
                            for k, v in values.items() if k in fields})


if __name__ == "__main__":
    sys.exit(run_job(sys.argv[1], sys.argv[2]))
