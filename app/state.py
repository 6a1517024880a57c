"""What the pages share: the runs to show, cached models and cached per-input outputs."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st
import torch
from torch.utils.data import DataLoader

from analysis import DatasetError, Outputs, collect, load_dataset
from models import Run, RunError, find_runs, load_run
from models.files import atomic_write_bytes

RUNS_ENV = "GATESCOPE_RUNS"  # os.pathsep-separated run folders, set by ``gatescope app``
ROOTS_ENV = "GATESCOPE_ROOTS"  # os.pathsep-separated folders searched for run folders
UPLOADS = Path(tempfile.gettempdir()) / "gatescope-uploads"  # uploaded runs, one folder per content hash
DEFAULT_RUN = Path(__file__).resolve().parent.parent / "assets" / "mnist5k" / "dynamic"


def run_paths() -> list[str]:
    """The run folders this app was started with, those found under its roots, and the runs
    uploaded in this session (the shipped default when there is none)."""
    paths = [p for p in os.environ.get(RUNS_ENV, "").split(os.pathsep) if p]
    for root in (r for r in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if r):
        paths += [str(p) for p in _found_runs(root)]
    paths += st.session_state.get("uploaded_runs", [])
    return list(dict.fromkeys(paths)) or [str(DEFAULT_RUN)]


@st.cache_data(ttl=30, show_spinner=False)
def _found_runs(root: str) -> list[Path]:
    return find_runs(root)


def _upload_run() -> None:
    """Sidebar form: a model.safetensors + model.json pair becomes a run folder of this session."""
    with st.sidebar.expander("Open an uploaded run"):
        weights = st.file_uploader("model.safetensors", type=["safetensors"], key="upload_weights")
        meta = st.file_uploader("model.json", type=["json"], key="upload_meta")
        if weights is None or meta is None:
            return
        data_w, data_m = weights.getvalue(), meta.getvalue()
        folder = UPLOADS / hashlib.sha256(data_w + data_m).hexdigest()[:16]
        atomic_write_bytes(folder / "model.safetensors", data_w)
        atomic_write_bytes(folder / "model.json", data_m)
        try:
            load_run(folder)
        except RunError as e:
            st.error(f"This upload is not a usable run: {str(e).replace(str(folder) + '/', '')}")
            return
        uploaded = st.session_state.setdefault("uploaded_runs", [])
        if str(folder) not in uploaded:
            uploaded.append(str(folder))
        st.success("Uploaded run added to the Run list.")


@st.cache_resource(show_spinner="Loading the model...")
def get_run(path: str) -> Run:
    return load_run(path)


@st.cache_data(show_spinner="Running the model over the dataset...", max_entries=8)
def get_outputs(path: str, weights_sha256: str, dataset: str, split: str) -> Outputs:
    """Per-input outputs of a run on a split (cached per weights hash, dataset and split)."""
    return collect(get_run(path).model, load_dataset(dataset, split))


def try_outputs(run: Run, split: str) -> tuple[Outputs | None, str | None]:
    """The run's outputs on its own dataset, or a message saying what data it needs."""
    try:
        return get_outputs(str(run.path), run.meta.weights_sha256, run.meta.dataset, split), None
    except DatasetError as e:
        return None, f"This model was trained on `{run.meta.dataset}`, which cannot be opened here: {e}"


def training_log(run: Run) -> pd.DataFrame:
    """The run's per-epoch log (empty when it has none)."""
    file = run.path / "train_log.jsonl"
    if not file.is_file():
        return pd.DataFrame()
    return pd.DataFrame([json.loads(line) for line in file.read_text().splitlines() if line.strip()])


def sidebar() -> tuple[Run, str]:
    """The run and split chosen in the sidebar."""
    _upload_run()
    paths = run_paths()
    path = st.sidebar.selectbox("Run", paths, format_func=lambda p: "/".join(Path(p).parts[-2:]), key="run")
    split = st.sidebar.radio("Split", ["test", "train"], horizontal=True, key="split")
    try:
        run = get_run(path)
    except RunError as e:
        st.error(f"This run cannot be opened: {e}. Choose another run in the sidebar.")
        st.stop()
    return run, split


@st.cache_resource(show_spinner=False, max_entries=8)
def get_mask_search(path: str, weights_sha256: str):
    """The mask-threshold search of a dynamic run over its cached test-split decisions."""
    from analysis.pruning import MaskSearch, mask_banks
    from models import cost_model

    run = get_run(path)
    out = get_outputs(path, weights_sha256, run.meta.dataset, "test")
    return MaskSearch(cost_model(run.model, tuple(run.meta.input_shape)), mask_banks(run.model), out.paths)


@st.cache_resource(show_spinner=False, max_entries=8)
def get_static_search(path: str, weights_sha256: str):
    """The structure search of a run (learned gates, else BN-scale importance) and its source."""
    from analysis.pruning import StaticSearch, static_gates
    from models import cost_model

    run = get_run(path)
    gates, source = static_gates(run.model)
    return StaticSearch(cost_model(run.model, tuple(run.meta.input_shape)), gates), source


@st.cache_data(show_spinner="Sweeping thresholds...", max_entries=8)
def get_mask_curve(path: str, weights_sha256: str, targets: tuple[float, ...]) -> pd.DataFrame:
    from analysis.pruning import mask_threshold_curve

    run = get_run(path)
    split = load_dataset(run.meta.dataset, "test")
    return pd.DataFrame(mask_threshold_curve(run.model, split, get_mask_search(path, weights_sha256), targets))


@st.cache_data(show_spinner=False, max_entries=64)
def get_thresholded_outputs(path: str, weights_sha256: str, threshold: float) -> Outputs:
    """Outputs on the test split of the run with mask entries below ``threshold`` set to 0."""
    from analysis.pruning import threshold_masks

    run = get_run(path)
    return collect(threshold_masks(run.model, threshold), load_dataset(run.meta.dataset, "test"), batch_size=250)


@st.cache_data(show_spinner=False, max_entries=16)
def get_analysis(path: str, weights_sha256: str, name: str) -> dict | None:
    """A stored analysis entry's JSON data (None when absent or computed from other weights)."""
    from analysis.store import AnalysisStore

    store = AnalysisStore(get_run(path))
    return store.data(name) if store.params(name) is not None else None


@st.cache_data(show_spinner=False, max_entries=16)
def get_analysis_table(path: str, weights_sha256: str, name: str, key: str) -> pd.DataFrame | None:
    """A stored analysis table (None when absent or stale)."""
    from analysis.store import AnalysisStore

    store = AnalysisStore(get_run(path))
    return store.table(name, key) if store.params(name) is not None else None


@st.cache_data(show_spinner="Loading images...", max_entries=4)
def _split_tensors(dataset: str, split: str):
    xs, ys = zip(*DataLoader(load_dataset(dataset, split).dataset, batch_size=500))
    return torch.cat(xs), torch.cat(ys)


def split_tensors(run: Run, split: str):
    """All images and labels of the run's dataset split, or a message saying what data it needs."""
    try:
        images, labels = _split_tensors(run.meta.dataset, split)
        return images, labels, None
    except DatasetError as e:
        return None, None, f"This model was trained on `{run.meta.dataset}`, which cannot be opened here: {e}"


@st.cache_data(show_spinner=False, max_entries=8)
def get_analysis_array(path: str, weights_sha256: str, name: str, key: str):
    """A stored analysis array, read once per session cache (None when absent or stale)."""
    from analysis.store import AnalysisStore

    store = AnalysisStore(get_run(path))
    return store.array(name, key) if store.params(name) is not None else None
