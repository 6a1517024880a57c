"""Measured latency of a dynamic run next to its counted MACs: does skipping channels pay?

Four ways to run the same inputs, timed per call (median over calls, after one warm pass):
the same architecture without gates (what the MACs ratio is measured against), the masked
dynamic network (every channel computed, switched-off ones multiplied by 0) in its default
layout and with channels-last weights (the layout the executor uses, so the comparison is not
only a layout's gain), and the :class:`~models.executor.DynamicExecutor` (switched-off channels
skipped). ``of_ideal`` is the executor's speed-up over the channels-last masked network (the
faster, so the stricter comparison) as a share of the counted one (1 / MACs ratio).
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

from models import Run, active_channels, channels_last, cost_model, create_model
from models.executor import DynamicExecutor
from models.files import atomic_write_json

FILE = "speed.json"


def _median_ms(fn, batches: list[torch.Tensor]) -> float:
    for x in batches:  # warm: allocator, kernels, the executor's weight cache
        fn(x)
    times = []
    for x in batches:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


@torch.no_grad()
def measure_speed(run: Run, images: torch.Tensor, *, batch_sizes=(1, 64), calls: int = 100,
                  threads: tuple[int, ...] | None = None) -> dict:
    """Latencies (ms per call) of the ungated, masked (default and channels-last layout) and
    executed network for each number of ``threads`` (default: torch's current one) and batch size,
    over ``calls`` batches drawn in order from ``images``, with the counted MACs ratio of those
    inputs."""
    model = run.model.eval()
    ungated = create_model(run.meta.arch, **{**run.meta.arch_args, "gated": False},
                           mean=tuple(run.meta.mean), std=tuple(run.meta.std)).eval()
    executor = DynamicExecutor(model)
    costs = cost_model(model, tuple(run.meta.input_shape))
    before = torch.get_num_threads()
    rows = []
    try:
        for n_threads in threads or (before,):
            torch.set_num_threads(n_threads)
            for bs in batch_sizes:
                n = max(1, min(calls, len(images) // bs))
                batches = [images[i * bs:(i + 1) * bs] for i in range(n)]
                _, decisions = model.decide(torch.cat(batches))
                ratio = float(costs.dynamic_macs(active_channels(decisions)).mean()) / costs.ungated_macs
                times = {name: _median_ms(fn, batches) for name, fn in
                         (("ungated_ms", ungated), ("masked_ms", model), ("executor_ms", executor))}
                with channels_last(model):
                    times["masked_cl_ms"] = _median_ms(model, batches)
                rows.append({"threads": n_threads, "batch_size": bs, "calls": n, "macs_ratio": ratio, **times,
                             "executor_vs_masked": times["masked_ms"] / times["executor_ms"],
                             "executor_vs_masked_cl": times["masked_cl_ms"] / times["executor_ms"],
                             "executor_vs_ungated": times["ungated_ms"] / times["executor_ms"],
                             "of_ideal": times["masked_cl_ms"] / times["executor_ms"] * ratio})
    finally:
        torch.set_num_threads(before)
    used = sorted({r["threads"] for r in rows})
    return {"rows": rows, "threads": used[-1], "torch": torch.__version__,
            "hardware": f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), "
                        f"{' and '.join(map(str, used))} threads"}


def save_speed(run: Run, result: dict) -> Path:
    """Keep the measurement with the run (the app's Overview shows it), tagged with the weights."""
    atomic_write_json(run.path / FILE, {**result, "weights_sha256": run.meta.weights_sha256})
    return run.path / FILE


def load_speed(run: Run) -> dict | None:
    """The run's stored measurement, if it was made with these weights."""
    import json

    try:
        data = json.loads((run.path / FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("weights_sha256") != run.meta.weights_sha256:
        return None
    return data


SPEED_COLUMNS = {  # row key -> column title and number format, as the app and the report show them
    "threads": ("threads", "%d"), "batch_size": ("batch", "%d"), "macs_ratio": ("counted MACs ratio", "%.3f"),
    "ungated_ms": ("ungated (ms)", "%.3f"), "masked_ms": ("masked (ms)", "%.3f"),
    "masked_cl_ms": ("masked, channels-last (ms)", "%.3f"), "executor_ms": ("executor (ms)", "%.3f"),
    "executor_vs_masked": ("executor vs masked", "%.2fx"), "executor_vs_masked_cl": ("vs masked channels-last", "%.2fx"),
    "executor_vs_ungated": ("executor vs ungated", "%.2fx"), "of_ideal": ("of counted ideal (%)", "%.0f")}


def speed_table(result: dict) -> "pd.DataFrame":
    """The measurement as a table with the app's column titles (``of_ideal`` in percent); a
    measurement stored before a column existed simply lacks it."""
    import pandas as pd

    df = pd.DataFrame(result["rows"]).drop(columns="calls", errors="ignore")
    if "of_ideal" in df:
        df["of_ideal"] = df["of_ideal"] * 100
    return df[[c for c in SPEED_COLUMNS if c in df]].rename(columns={k: v[0] for k, v in SPEED_COLUMNS.items()})


def format_speed(result: dict) -> str:
    lines = [f"{'threads':>7} {'batch':>5} {'MACs ratio':>10} {'ungated ms':>11} {'masked ms':>10} {'masked CL ms':>13} "
             f"{'executor ms':>12} {'vs masked':>10} {'vs masked CL':>13} {'of ideal':>9}"]
    for r in result["rows"]:
        lines.append(f"{r['threads']:>7} {r['batch_size']:>5} {r['macs_ratio']:>10.3f} {r['ungated_ms']:>11.3f} "
                     f"{r['masked_ms']:>10.3f} {r['masked_cl_ms']:>13.3f} {r['executor_ms']:>12.3f} "
                     f"{r['executor_vs_masked']:>9.2f}x {r['executor_vs_masked_cl']:>12.2f}x {r['of_ideal']:>9.0%}")
    return "\n".join(lines)
