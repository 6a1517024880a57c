"""Killed and concurrent writers: run folders and analysis stores stay readable and complete."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from conftest import DEFAULT_RUN, REPO

from analysis.analyze import AnalyzeConfig, analyze, umap_points
from analysis.store import GRACE_S, AnalysisStore
from models import load_run

N = 1 << 20  # float64 elements: an 8 MiB array, so a kill often lands inside its write

# Rewrites a run folder (weights alternate between the ones it found and those + 1) and,
# in a second run's store, two entries whose arrays hold variant + j; "ready" after one round.
WRITER = f"""
import sys
import numpy as np, pandas as pd, torch
from analysis.store import AnalysisStore
from models import load_run, save_run
run = load_run(sys.argv[1])
store = AnalysisStore(load_run(sys.argv[2]))
base = {{k: v.clone() for k, v in run.model.named_parameters()}}  # not the normalisation model.json states
for i in range(10**6):
    variant = i % 2  # two weight sets and two parameter sets: the folders stay small
    with torch.no_grad():
        for k, v in run.model.named_parameters():
            v.copy_(base[k] + variant)
    run.meta = save_run(run.path, run.model, run.meta)
    for j in range(2):
        store.save(f"big-{{j}}", {{"variant": variant}}, arrays={{"a": np.full({N}, variant + j, np.float64)}},
                   tables={{"t": pd.DataFrame({{"v": np.full(1000, variant + j)}})}})
    if i == 0:
        print("ready", flush=True)
"""

# Saves COUNT entries PREFIX-k into a run's store, starting when the file GO exists.
SAVER = """
import sys, time
from pathlib import Path
import numpy as np
from analysis.store import AnalysisStore
from models import load_run
path, prefix, go, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
store = AnalysisStore(load_run(path))
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
for k in range(count):
    store.save(f"{prefix}-{k}", {"k": k}, arrays={"a": np.arange(k + 1)}, data={"who": prefix})
"""


def _start(script: str, *args) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == "ready\n", f"writer did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    return proc


def _quiet(message: str) -> None:
    pass


def _copy_run(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis"))
    return dst


def test_a_killed_writer_leaves_the_previous_complete_state(tiny_run, tmp_path):
    analysed = _copy_run(tiny_run, tmp_path / "analysed")
    rng = random.Random(0)
    for kill in range(5):
        proc = _start(WRITER, tiny_run, analysed)
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL, "the writer was still running when killed"

        store = AnalysisStore(load_run(analysed))
        assert store.names() == ["big-0", "big-1"], f"kill {kill}"
        for j, name in enumerate(store.names()):
            value = store.params(name)["variant"] + j  # the files the manifest lists match its parameters
            assert store.array(name, "a").shape == (N,) and (store.array(name, "a") == value).all()
            assert (store.table(name, "t")["v"] == value).all() and len(store.table(name, "t")) == 1000

        folder = analysed / "analysis"
        json.loads((folder / "manifest.json").read_text())
        for file in folder.iterdir():  # no half-written file under a final name, listed or not (hidden
            # .NAME.*.tmp files of the killed writer may remain: no reader opens them)
            if file.suffix == ".npy":
                assert np.load(file).shape == (N,), file.name
            elif file.suffix == ".npz":  # arrays over COMPRESS_BYTES
                with np.load(file) as archive:
                    assert archive["array"].shape == (N,), file.name
            elif file.suffix == ".parquet":
                assert len(pd.read_parquet(file)) == 1000, file.name

        load_run(tiny_run)  # raises if the weights do not match model.json's SHA-256


def test_concurrent_saves_into_one_store_lose_no_entry(tiny_run, tmp_path):
    go, count = tmp_path / "go", 40
    savers = [_start(SAVER, tiny_run, prefix, go, count) for prefix in ("a", "b")]
    go.touch()
    for proc in savers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

    store = AnalysisStore(load_run(tiny_run))
    assert store.names() == sorted(f"{p}-{k}" for p in "ab" for k in range(count))
    for p in "ab":
        for k in range(count):
            assert store.params(f"{p}-{k}") == {"k": k}
            np.testing.assert_array_equal(store.array(f"{p}-{k}", "a"), np.arange(k + 1))
            assert store.data(f"{p}-{k}") == {"who": p}


def test_a_reader_holding_parameters_reads_its_own_results(tiny_run):
    store = AnalysisStore(load_run(tiny_run))
    first, second = pd.DataFrame({"x": [1.0, 2.0]}), pd.DataFrame({"x": [3.0]})
    store.save("umap", {"neighbors": 5}, tables={"points": first})
    store.save("umap", {"neighbors": 8}, tables={"points": second})  # another session, other parameters
    pd.testing.assert_frame_equal(store.table("umap", "points", {"neighbors": 5}), first)
    pd.testing.assert_frame_equal(store.table("umap", "points"), second)  # the manifest lists the latest
    assert not store.has("umap", {"neighbors": 5}) and store.has("umap", {"neighbors": 8})


def test_entries_stored_before_file_names_had_digests_still_read(tiny_run):
    run = load_run(tiny_run)
    folder = tiny_run / "analysis"  # as an older gatescope wrote it: clean.rows.parquet, ...
    folder.mkdir()
    pd.DataFrame({"label": [3, 1]}).to_parquet(folder / "clean.rows.parquet", index=False)
    np.save(folder / "clean.log_probs.npy", np.zeros((2, 4, 3), np.float32))
    params = {"split": "test", "limit": 2}
    (folder / "manifest.json").write_text(json.dumps({"weights_sha256": run.meta.weights_sha256, "entries": {
        "clean": {"params": params, "files": ["clean.rows.parquet", "clean.log_probs.npy"]}}}))
    store = AnalysisStore(run)
    assert store.has("clean", params)
    assert list(store.table("clean", "rows")["label"]) == [3, 1]
    assert store.array("clean", "log_probs", params).shape == (2, 4, 3)


def test_unlisted_files_are_deleted_only_after_the_grace_period(tiny_run):
    store = AnalysisStore(load_run(tiny_run))
    folder = store.path

    def age(*names):
        aged = time.time() - GRACE_S - 60
        for name in names:
            os.utime(folder / name, (aged, aged))

    store.save("x", {"v": 1}, arrays={"a": np.zeros(3)})
    old = set(os.listdir(folder)) - {"manifest.json", ".manifest.lock"}
    age(*old)  # computed long ago
    store.save("x", {"v": 2}, arrays={"a": np.ones(3)})
    assert old <= set(os.listdir(folder)), "unlisted just now: a session that read the old manifest may open them"

    (folder / ".x.killed.npy.tmp").write_bytes(b"half")
    (folder / "notes.txt").write_text("not the store's")
    age(*old, ".x.killed.npy.tmp", "notes.txt")
    (folder / ".y.running.npy.tmp").write_bytes(b"being written")
    store.save("y", {}, arrays={"a": np.zeros(1)})

    left = set(os.listdir(folder))
    assert not old & left and ".x.killed.npy.tmp" not in left
    assert {"notes.txt", ".y.running.npy.tmp"} <= left
    np.testing.assert_array_equal(store.array("x", "a"), np.ones(3))
    np.testing.assert_array_equal(store.array("y", "a"), np.zeros(1))


def test_umap_sessions_get_their_own_map_when_another_saves_in_between(tmp_path, monkeypatch):
    path = _copy_run(DEFAULT_RUN, tmp_path / "dynamic")
    config = AnalyzeConfig(limit=60, attacks=("fgsm",), detectors=("decision-logreg",), reference=200, n_boot=20,
                           adaptive=False)
    analyze(load_run(path), config, log=_quiet)
    run = load_run(path)
    first, second = {"neighbors": 5, "min_dist": 0.1}, {"neighbors": 8, "min_dist": 0.5}
    expected = [umap_points(run, **s, log=_quiet) for s in (first, second)]  # one after the other
    assert not expected[0][["x", "y"]].equals(expected[1][["x", "y"]])

    # Pin the worst interleaving: the first session has saved its map and not yet read it back
    # when the second session computes and saves its own.
    saved, second_done = threading.Event(), threading.Event()
    save = AnalysisStore.save

    def save_then_wait(store, name, params, **entry):
        save(store, name, params, **entry)
        if name == "umap" and params["neighbors"] == first["neighbors"]:
            saved.set()
            assert second_done.wait(60)

    def second_session():
        assert saved.wait(60)
        try:
            return umap_points(run, **second, log=_quiet)
        finally:
            second_done.set()

    monkeypatch.setattr(AnalysisStore, "save", save_then_wait)
    with ThreadPoolExecutor(2) as pool:
        later = pool.submit(second_session)
        got = [umap_points(run, **first, log=_quiet), later.result()]
    assert AnalysisStore(run).params("umap")["neighbors"] == second["neighbors"], "the second session saved last"
    for frame, want in zip(got, expected):
        pd.testing.assert_frame_equal(frame, want)


def test_an_entry_holding_nan_is_refused_and_the_stored_one_kept(tiny_run):
    """Analysis JSON is standard JSON: a NaN (which strict parsers reject) is refused naming
    where it is, before the manifest changes, so the entry stored before stays readable."""
    store = AnalysisStore(load_run(tiny_run))
    store.save("detection", {"v": 1}, data={"auc": 0.9})
    try:
        store.save("detection", {"v": 2}, data={"attacks": {"fgsm": {"auc": float("nan")}}})
    except ValueError as e:
        assert "attacks.fgsm.auc is nan" in str(e)
    else:
        raise AssertionError("a NaN was written")
    assert store.params("detection") == {"v": 1} and store.data("detection") == {"auc": 0.9}
    assert not any("NaN" in f.read_text() for f in store.path.glob("*.json"))


def test_large_arrays_are_stored_compressed_and_read_back_exactly(tiny_run):
    """Arrays over COMPRESS_BYTES (attacked images) go to a compressed .npz, small ones stay .npy;
    both read back bit for bit."""
    from analysis.store import COMPRESS_BYTES

    store = AnalysisStore(load_run(tiny_run))
    rng = np.random.default_rng(0)
    images = np.zeros((2000, 1, 28, 28), np.float32)  # mostly background, as attacked digits are
    images[:, :, 8:20, 8:20] = rng.random((2000, 1, 12, 12), dtype=np.float32)
    small = rng.random(100).astype(np.float32)
    assert images.nbytes > COMPRESS_BYTES > small.nbytes
    store.save("attack-x", {"eps": 0.1}, arrays={"x_adv": images, "small": small})
    files = store.entries()["attack-x"]["files"]
    assert [f.rsplit(".", 2)[1:] for f in files] == [["x_adv", "npz"], ["small", "npy"]]
    packed = store.path / files[0]
    assert packed.stat().st_size < images.nbytes / 2
    np.testing.assert_array_equal(store.array("attack-x", "x_adv"), images)
    np.testing.assert_array_equal(store.array("attack-x", "small"), small)
    assert store.array("attack-x", "x_adv").dtype == np.float32
    store.save("often-read", {"v": 1}, arrays={"x": images}, compress=False)  # e.g. the per-input outputs
    assert [f.rsplit(".", 2)[1:] for f in store.entries()["often-read"]["files"]] == [["x", "npy"]]
    np.testing.assert_array_equal(store.array("often-read", "x"), images)
