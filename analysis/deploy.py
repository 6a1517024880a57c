"""Deployable files of what gatescope trains and prunes: an ONNX export checked against PyTorch in
onnxruntime on the run's test split, and the file's measured latency in onnxruntime.

>>> check = export_run("assets/mnist5k/baseline", "baseline.onnx")  # raises ExportError if it differs
>>> onnx_latency(Path("baseline.onnx").read_bytes(), (1, 28, 28))
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from models import Network, Run, RunMeta, build_model, gated_convs, load_run
from models.export import ExportError, export_onnx, onnx_logits, onnx_session, require
from models.files import atomic_write_bytes

from .datasets import DatasetSplit, load_run_dataset
from .pruning import threshold_masks

ATOL = 1e-4  # largest accepted |onnxruntime logit - PyTorch logit|
BATCH_SIZES = (1, 64)
CALLS = 20  # timed calls per batch size, after WARM untimed ones (a few dozen runs in all)
WARM = 3


@dataclass(frozen=True)
class ExportCheck:
    """onnxruntime's logits against PyTorch's on the same images."""

    images: int
    max_abs_diff: float  # over all logits of all images
    prediction_mismatches: int  # images whose argmax class differs
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol and self.prediction_mismatches == 0

    @property
    def message(self) -> str:
        same = "the same prediction for every image" if not self.prediction_mismatches else \
            f"{self.prediction_mismatches} differing predictions"
        verdict = "equal" if self.ok else "NOT equal"
        return (f"onnxruntime's logits {verdict} to PyTorch's within {self.atol:g} on {self.images} test images "
                f"(max |difference| {self.max_abs_diff:.2g}, {same})")


def export_network(run: Run, mask_threshold: float | None = None) -> Network:
    """The network of ``run`` to export: a static or pruned run as it is; a dynamic run with its mask
    entries below ``mask_threshold`` set to 0 (``None``: the masks as trained). Raises
    :class:`ExportError` for a run of learned channel gates (a ranking, not a structure yet) and for a
    threshold on a run without mask banks."""
    if run.meta.arch_args.get("channel_gates"):
        raise ExportError(f"{run.path} holds learned channel gates, not a pruned structure: build one with "
                          f"`gatescope prune build {run.path} OUT --target P`, then export OUT")
    if mask_threshold is None:
        return run.model
    if not gated_convs(run.model):
        raise ExportError(f"a mask threshold applies to dynamic runs (with mask banks); {run.path} has none")
    if not math.isfinite(mask_threshold) or mask_threshold < 0:
        raise ExportError(f"the mask threshold must be a finite number >= 0, got {mask_threshold}")
    return threshold_masks(run.model, mask_threshold)


@torch.no_grad()
def check_onnx(model: Network, data: bytes, split: DatasetSplit, *, limit: int = 0, batch_size: int = 250,
               atol: float = ATOL) -> ExportCheck:
    """Compare the ONNX file ``data`` in onnxruntime with ``model`` in PyTorch on ``split`` (its first
    ``limit`` images; 0: all)."""
    if limit < 0:
        raise ExportError(f"limit must be >= 0 (0: the whole split), got {limit}")
    dataset = Subset(split.dataset, range(min(limit, len(split)))) if limit else split.dataset
    session = onnx_session(data)
    model.eval()
    worst, mismatches, n = 0.0, 0, 0
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        ours = model(x).numpy()
        theirs = onnx_logits(session, x)
        worst = max(worst, float(np.abs(ours - theirs).max()))
        mismatches += int((ours.argmax(1) != theirs.argmax(1)).sum())
        n += len(x)
    if n == 0:
        raise ExportError(f"{split.spec}:{split.split}: no images to check the export on")
    return ExportCheck(images=n, max_abs_diff=worst, prediction_mismatches=mismatches, atol=atol)


def _metadata(run: Run, mask_threshold: float | None) -> dict[str, str]:
    return {
        "gatescope.run": str(run.path), "gatescope.arch": run.meta.arch,
        "gatescope.arch_args": json.dumps(run.meta.arch_args, allow_nan=False),
        "gatescope.weights_sha256": run.meta.weights_sha256,
        "gatescope.class_names": json.dumps(run.meta.class_names),
        "gatescope.input": f"images: float32 (B, {', '.join(map(str, run.meta.input_shape))}) in [0, 1]; "
                           "the normalisation is inside the graph",
        "gatescope.mask_threshold": "none" if mask_threshold is None else repr(mask_threshold),
    }


def export_run(path: str | Path, out: str | Path, *, mask_threshold: float | None = None, limit: int = 0,
               atol: float = ATOL) -> ExportCheck:
    """Export the run folder ``path`` to the ONNX file ``out``, written (atomically) only when
    onnxruntime's logits equal PyTorch's within ``atol`` on the run's test split (first ``limit``
    images; 0: all). Returns the check; raises :class:`ExportError` (nothing written) otherwise."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"{out}: the file to write should end in .onnx")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give the .onnx file to write")
    require("onnxruntime")  # before the slow steps: the check cannot run without it
    run = load_run(path)
    model = export_network(run, mask_threshold)
    split = load_run_dataset(run.meta, "test")  # a missing dataset fails before the export
    data = export_onnx(model, tuple(run.meta.input_shape), metadata=_metadata(run, mask_threshold))
    check = check_onnx(model, data, split, limit=limit, atol=atol)
    if not check.ok:
        raise ExportError(f"{out} not written: {check.message}")
    atomic_write_bytes(out, data)
    return check


def onnx_latency(data: bytes, input_shape: tuple[int, int, int], *, reference: bytes | None = None,
                 batch_sizes=BATCH_SIZES, calls: int = CALLS, threads: int | None = None) -> dict:
    """Measured onnxruntime latency of the ONNX file ``data``: the median ms per call (``ms``) for each
    batch size, over ``calls`` timed calls after a few untimed ones. With ``reference`` (another ONNX
    file), its calls alternate with those of ``data`` (``reference_ms``), so that both are timed in the
    same state of the machine. The inputs are seeded random images: the graphs' work does not depend
    on them (a dynamic graph computes every channel)."""
    sessions = {"ms": onnx_session(data, threads=threads)}
    if reference is not None:
        sessions["reference_ms"] = onnx_session(reference, threads=threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for bs in batch_sizes:
        x = torch.rand((bs, *input_shape), generator=gen)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for step in range(WARM + calls):
            for name, session in sessions.items():
                t0 = time.perf_counter()
                onnx_logits(session, x)
                if step >= WARM:
                    times[name].append(time.perf_counter() - t0)
        rows.append({"batch_size": bs, "calls": calls, **{k: statistics.median(v) * 1000 for k, v in times.items()}})
    return {"rows": rows, "threads": sessions["ms"].get_session_options().intra_op_num_threads,
            "onnxruntime": require("onnxruntime").__version__}


def structure_network(meta: RunMeta, widths: list[int] | None, *, seed: int = 0) -> Network:
    """The ungated network of ``meta``'s architecture at ``widths`` (``None``: the unpruned default
    width) with fresh random weights from ``seed``, as ``prune build`` makes it. Its timing does not
    depend on the weights."""
    args = {k: v for k, v in meta.arch_args.items() if k not in ("channel_gates", "widths", "num_actions")}
    structure = RunMeta(**{**asdict(meta), "arch_args": {**args, "gated": False, "widths": widths}})
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        return build_model(structure).eval()


def profile_onnx(model: Network, input_shape: tuple[int, int, int], **latency) -> tuple[bytes, dict]:
    """The ONNX file of ``model`` and its measured :func:`onnx_latency` (keywords: its options)."""
    data = export_onnx(model, input_shape)
    return data, onnx_latency(data, input_shape, **latency)
