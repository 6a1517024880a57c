"""What the pages share: the runs to show, cached models and cached per-input outputs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st
import torch
from torch.utils.data import DataLoader

from analysis import DatasetError, NonFiniteError, Outputs
from analysis.datasets import CIFAR10_CLASSES, DATA_ENV, ROOTLESS, data_roots, load_dataset, load_run_dataset
from app.links import follow_url, one_of, to_url
from app.roots import PathError, command_line_runs, resolve_within, roots
from models import Run, RunError, find_runs, load_run, read_meta
from models.convert import import_torch_weights
from models.official import ARCHS, FORMATS, import_official
from models.files import atomic_write_bytes

UPLOADS = Path(tempfile.gettempdir()) / "gatescope-uploads"  # uploaded runs, one folder per content hash
RUN_FORMAT = "gatescope run"  # the upload format choices: this, then models.official.FORMATS
DEFAULT_RUN = Path(__file__).resolve().parent.parent / "assets" / "mnist5k" / "dynamic"


def run_paths() -> list[str]:
    """The run folders this app was started with, those found under its roots, and the runs
    uploaded in this session (the shipped default when there is none)."""
    paths = [str(p) for p in command_line_runs()]
    for root in roots():
        paths += [str(p) for p in _found_runs(str(root))]
    paths += st.session_state.get("opened_runs", [])
    return list(dict.fromkeys(paths)) or [str(DEFAULT_RUN)]


@st.cache_data(ttl=30, show_spinner=False)
def _found_runs(root: str) -> list[Path]:
    return find_runs(root)


def store_uploaded_run(weights_name: str, weights: bytes, meta: bytes) -> Path:
    """Check an uploaded weights file (safetensors, or a torch.save-d .pt/.pth read tensors-only)
    and model.json, and keep them as a run folder in the uploads cache; raises RunError."""
    def fill(tmp: Path) -> None:
        atomic_write_bytes(tmp / "model.json", meta)
        if Path(weights_name).suffix.lower() in (".pt", ".pth"):
            atomic_write_bytes(tmp / "upload.pt", weights)
            import_torch_weights(tmp / "upload.pt", read_meta(tmp), tmp)
            (tmp / "upload.pt").unlink()
        else:
            atomic_write_bytes(tmp / "model.safetensors", weights)

    return _keep_checked(weights + meta, fill)


def store_official_upload(fmt: str, arch: str, name: str, data: bytes) -> Path:
    """Check an uploaded file of the papers' code (``fmt`` one of :data:`models.official.FORMATS`,
    a CIFAR-10 network ``arch``) and keep it, imported, as a run folder in the uploads cache;
    raises RunError."""
    def fill(tmp: Path) -> None:
        file = tmp / (re.sub(r"[^\w.-]", "_", Path(name).name)[:100].lstrip(".") or "upload")
        atomic_write_bytes(file, data)
        import_official(file, tmp, fmt=fmt, arch=arch, dataset="cifar10", class_names=CIFAR10_CLASSES)
        file.unlink()

    return _keep_checked(f"{fmt}\0{arch}\0".encode() + data, fill)


def _keep_checked(content: bytes, fill: Callable[[Path], None]) -> Path:
    """The uploads-cache folder named by a digest of ``content``: ``fill`` writes the run into a
    private temporary folder, which moves (atomically) into the cache only once it loads, so a
    bad upload leaves nothing behind; RunError messages name files without the temporary path."""
    folder = UPLOADS / hashlib.sha256(content).hexdigest()[:16]
    if (folder / "model.json").is_file():
        return folder  # the same upload, checked before
    UPLOADS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=UPLOADS, prefix=".check-", ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        try:
            fill(tmp)
            load_run(tmp)
        except RunError as e:
            raise RunError(str(e).replace(str(tmp) + os.sep, "")) from None
        try:
            tmp.rename(folder)
        except OSError:  # another session stored the same upload first
            pass
    return folder


def _upload_run() -> None:
    """Sidebar form: uploaded weights + model.json, or a file of the papers' code, become a run
    folder of this session."""
    with st.sidebar.expander("Open an uploaded run"):
        fmt = st.radio("Format", [RUN_FORMAT, *FORMATS], key="upload_format",
                       help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
        if fmt != RUN_FORMAT:
            _upload_official(fmt)
            return
        weights = st.file_uploader("Weights (model.safetensors, or a .pt/.pth state dict)",
                                   type=["safetensors", "pt", "pth"], key="upload_weights")
        meta = st.file_uploader("model.json", type=["json"], key="upload_meta")
        if weights is None or meta is None:
            return
        try:
            folder = store_uploaded_run(weights.name, weights.getvalue(), meta.getvalue())
        except RunError as e:
            st.error(f"This upload is not a usable run: {e}")
            return
        _add_run(folder)
        st.success("Uploaded run added to the Run list.")


def _upload_official(fmt: str) -> None:
    arch = st.radio("Architecture (CIFAR-10)", list(ARCHS), key="upload_arch", horizontal=True)
    data = st.file_uploader(f"{fmt} file ({FORMATS[fmt].split(' of ')[0]})", type=["tar", "pth", "pt", "pkl"],
                            key="upload_official")
    if data is None:
        return
    try:
        folder = store_official_upload(fmt, arch, data.name, data.getvalue())
    except RunError as e:
        st.error(f"This upload is not a usable {fmt} {arch} file: {e}")
        return
    _add_run(folder)
    st.success(f"Imported {fmt} {arch} added to the Run list.")


def _open_path() -> None:
    """Sidebar form: a run folder typed by path, accepted only inside the --root folders."""
    with st.sidebar.expander("Open a run folder by path"):
        if not roots():
            st.caption("Start the app with `gatescope app --root FOLDER` to open run folders under FOLDER.")
            return
        text = st.text_input("Run folder", key="open_path", placeholder=str(roots()[0] / "my-run"))
        if not text:
            return
        try:
            folder = resolve_within(text, roots())
            read_meta(folder)
        except (PathError, RunError) as e:
            st.error(f"Cannot open this folder: {e}")
            return
        _add_run(folder)
        st.success(f"Added `{folder}` to the Run list.")


def _add_run(folder: Path) -> None:
    opened = st.session_state.setdefault("opened_runs", [])
    if str(folder) not in opened:
        opened.append(str(folder))


@st.cache_resource(show_spinner="Loading the model...")
def get_run(path: str) -> Run:
    return load_run(path)


@st.cache_data(show_spinner="Running the model over the dataset (once: the outputs are stored with the run)...",
               max_entries=8)
def get_outputs(path: str, weights_sha256: str, dataset: str, split: str) -> Outputs:
    """Per-input outputs of a run on a split (cached per weights hash, dataset and split, and on
    disk in the run's analysis store, so a later launch reads them)."""
    from analysis.outputs_cache import stored_outputs

    return stored_outputs(get_run(path), split)


def try_outputs(run: Run, split: str) -> tuple[Outputs | None, str | None]:
    """The run's outputs on its own dataset, or a message saying what data it needs."""
    try:
        return get_outputs(str(run.path), run.meta.weights_sha256, run.meta.dataset, split), None
    except (DatasetError, NonFiniteError) as e:
        return None, _data_problem(run, e)


def _data_problem(run: Run, error: Exception) -> str:
    return f"This model was trained on `{run.meta.dataset}`, which cannot be used here: {error}"


def training_log(run: Run) -> pd.DataFrame:
    """The run's per-epoch log (empty when it has none)."""
    file = run.path / "train_log.jsonl"
    if not file.is_file():
        return pd.DataFrame()
    return pd.DataFrame([json.loads(line) for line in file.read_text().splitlines() if line.strip()])


def sidebar() -> tuple[Run, str]:
    """The run and split chosen in the sidebar."""
    _upload_run()
    _open_path()
    paths = run_paths()
    for key, options in (("run", paths), ("split", ["test", "train"])):
        if problem := follow_url(key, one_of(options)):
            st.sidebar.warning(problem)
    path = st.sidebar.selectbox("Run", paths, format_func=lambda p: "/".join(Path(p).parts[-2:]), key="run")
    split = st.sidebar.radio("Split", ["test", "train"], horizontal=True, key="split")
    to_url(run=path, split=split)
    try:
        run = get_run(path)
    except RunError as e:
        st.error(f"This run cannot be opened: {e}. Choose another run in the sidebar.")
        st.stop()
    _data_folder(run)
    return run, split


def _data_folder(run: Run) -> None:
    """Sidebar form, for a run whose dataset spec names no folder (``cifar10``) that this machine
    does not know yet: the folder of the user's copy, inside a --root folder."""
    name, _, root = run.meta.dataset.partition(":")
    if root or name in ROOTLESS or name in data_roots():
        return
    with st.sidebar.expander(f"Data: where is your {name} copy?", expanded=True):
        if not roots():
            st.caption(f"Start the app with `--data {name}=DIR`, or with `--root FOLDER` to type a folder under FOLDER.")
            return
        text = st.text_input(f"Folder of your {name} copy", key=f"data_{name}")
        if not text:
            return
        try:
            folder = resolve_within(text, roots())
            load_dataset(f"{name}:{folder}", "test")
        except (PathError, DatasetError) as e:
            st.error(f"Cannot use this folder: {e}")
            return
        os.environ[DATA_ENV] = os.pathsep.join(f"{k}={v}" for k, v in {**data_roots(), name: str(folder)}.items())
        st.success(f"Using `{folder}` for {name} (for every session of this app).")


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
    """The structure search of a run (learned gates, else BN-scale importance) and its source;
    targets mean what they mean in the CLI (against the unexpanded network)."""
    from analysis.scratch import structure_search

    return structure_search(get_run(path))


@st.cache_data(show_spinner="Sweeping thresholds...", max_entries=8)
def get_mask_curve(path: str, weights_sha256: str, targets: tuple[float, ...]) -> pd.DataFrame:
    from analysis.pruning import mask_threshold_curve

    run = get_run(path)
    split = load_run_dataset(run.meta, "test")
    return pd.DataFrame(mask_threshold_curve(run.model, split, get_mask_search(path, weights_sha256), targets))


@st.cache_data(show_spinner="Evaluating the threshold on the model's own decisions...", max_entries=64)
def get_mask_threshold(path: str, weights_sha256: str, target: float):
    """The mask threshold for ``target`` re-searched on the thresholded model's own test-split
    decisions, and that model's outputs (:func:`analysis.pruning.refined_mask_threshold`)."""
    from analysis.pruning import refined_mask_threshold

    run = get_run(path)
    return refined_mask_threshold(run.model, load_run_dataset(run.meta, "test"), get_mask_search(path, weights_sha256),
                                  target, batch_size=250)


def _stored_version(path: str) -> int:
    """Changes whenever the run's analysis manifest is written (a job or the CLI saved results), so
    the cached readers below read afresh without a restart."""
    from analysis.store import FOLDER, MANIFEST

    try:
        return os.stat(Path(path) / FOLDER / MANIFEST).st_mtime_ns
    except OSError:
        return 0


def get_analysis(path: str, weights_sha256: str, name: str) -> dict | None:
    """A stored analysis entry's JSON data (None when absent or computed from other weights)."""
    return _analysis_data(path, weights_sha256, name, _stored_version(path))


@st.cache_data(show_spinner=False, max_entries=16)
def _analysis_data(path: str, weights_sha256: str, name: str, version: int) -> dict | None:
    from analysis.store import AnalysisStore

    store = AnalysisStore(get_run(path))
    return store.data(name) if store.params(name) is not None else None


def get_analysis_params(path: str, weights_sha256: str, name: str) -> dict | None:
    """The parameters a stored analysis entry was computed with (its split, limit, ...)."""
    from analysis.store import AnalysisStore

    return AnalysisStore(get_run(path)).params(name)


def get_analysis_table(path: str, weights_sha256: str, name: str, key: str) -> pd.DataFrame | None:
    """A stored analysis table (None when absent or stale)."""
    return _analysis_table(path, weights_sha256, name, key, _stored_version(path))


@st.cache_data(show_spinner=False, max_entries=16)
def _analysis_table(path: str, weights_sha256: str, name: str, key: str, version: int) -> pd.DataFrame | None:
    from analysis.store import AnalysisStore

    store = AnalysisStore(get_run(path))
    return store.table(name, key) if store.params(name) is not None else None


@st.cache_data(show_spinner="Loading images...", max_entries=4)
def _split_tensors(path: str, split: str):
    xs, ys = zip(*DataLoader(load_run_dataset(get_run(path).meta, split).dataset, batch_size=500))
    return torch.cat(xs), torch.cat(ys)


def split_tensors(run: Run, split: str):
    """All images and labels of the run's dataset split, or a message saying what data it needs."""
    try:
        images, labels = _split_tensors(str(run.path), split)
        return images, labels, None
    except (DatasetError, NonFiniteError) as e:
        return None, None, _data_problem(run, e)


def get_analysis_array(path: str, weights_sha256: str, name: str, key: str):
    """A stored analysis array, read once per session cache (None when absent or stale)."""
    return _analysis_array(path, weights_sha256, name, key, _stored_version(path))


@st.cache_data(show_spinner=False, max_entries=8)
def _analysis_array(path: str, weights_sha256: str, name: str, key: str, version: int):
    from analysis.store import AnalysisStore

    store = AnalysisStore(get_run(path))
    return store.array(name, key) if store.params(name) is not None else None


@st.cache_data(show_spinner="Exporting to ONNX...", max_entries=8)
def get_reference_onnx(path: str, weights_sha256: str) -> tuple[bytes, int]:
    """The ONNX file of the run's unpruned network (its architecture ungated, at default width, fresh
    random weights) and its counted MACs: what pruned structures and thresholded masks are timed and
    counted against."""
    from analysis.deploy import structure_network
    from models import cost_model
    from models.export import export_onnx

    meta = get_run(path).meta
    net = structure_network(meta, None)
    return export_onnx(net, tuple(meta.input_shape)), cost_model(net, tuple(meta.input_shape)).ungated_macs


@st.cache_data(show_spinner="Exporting to ONNX and timing it in onnxruntime...", max_entries=32)
def get_structure_onnx(path: str, weights_sha256: str, widths: tuple[int, ...]) -> tuple[bytes, dict]:
    """The ONNX file of the run's architecture, ungated, at ``widths`` with fresh random weights (as
    ``prune build`` makes it), and its onnxruntime latency timed alternately with the unpruned one's."""
    from analysis.deploy import profile_onnx, structure_network

    meta = get_run(path).meta
    return profile_onnx(structure_network(meta, list(widths)), tuple(meta.input_shape),
                        reference=get_reference_onnx(path, weights_sha256)[0])


@st.cache_data(show_spinner="Exporting to ONNX and timing it in onnxruntime...", max_entries=32)
def get_thresholded_onnx(path: str, weights_sha256: str, threshold: float) -> tuple[bytes, dict]:
    """The ONNX file (decisions inside the graph) of the run's dynamic network with mask entries below
    ``threshold`` set to 0, and its onnxruntime latency timed alternately with the unpruned one's."""
    from analysis.deploy import profile_onnx
    from analysis.pruning import threshold_masks

    run = get_run(path)
    return profile_onnx(threshold_masks(run.model, threshold), tuple(run.meta.input_shape),
                        reference=get_reference_onnx(path, weights_sha256)[0])
