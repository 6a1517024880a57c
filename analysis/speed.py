"""Measured latency of a dynamic run next to its counted MACs: does skipping channels pay?

Three ways to run the same inputs, timed per call (median over calls, after one warm pass):
the same architecture without gates (what the MACs ratio is measured against), the masked
dynamic network (every channel computed, switched-off ones multiplied by 0) and the
:class:`~models.executor.DynamicExecutor` (switched-off channels skipped).
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

from models import Run, active_channels, cost_model, create_model
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
def measure_speed(run: Run, images: torch.Tensor, *, batch_sizes=(1, 64), calls: int = 100) -> dict:
    """Latencies (ms per call) of the ungated, masked and executed network for each batch size,
    over ``calls`` batches drawn in order from ``images``, with the counted MACs ratio of those
    inputs."""
    model = run.model.eval()
    ungated = create_model(run.meta.arch, **{**run.meta.arch_args, "gated": False},
                           mean=tuple(run.meta.mean), std=tuple(run.meta.std)).eval()
    executor = DynamicExecutor(model)
    costs = cost_model(model, tuple(run.meta.input_shape))
    rows = []
    for bs in batch_sizes:
        n = max(1, min(calls, len(images) // bs))
        batches = [images[i * bs:(i + 1) * bs] for i in range(n)]
        _, decisions = model.decide(torch.cat(batches))
        ratio = float(costs.dynamic_macs(active_channels(decisions)).mean()) / costs.ungated_macs
        times = {name: _median_ms(fn, batches) for name, fn in
                 (("ungated_ms", ungated), ("masked_ms", model), ("executor_ms", executor))}
        rows.append({"batch_size": bs, "calls": n, "macs_ratio": ratio, **times,
                     "executor_vs_masked": times["masked_ms"] / times["executor_ms"],
                     "executor_vs_ungated": times["ungated_ms"] / times["executor_ms"]})
    return {"rows": rows, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "hardware": f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), "
                        f"{torch.get_num_threads()} threads"}


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


def format_speed(result: dict) -> str:
    lines = [f"{'batch':>5} {'MACs ratio':>10} {'ungated ms':>11} {'masked ms':>10} {'executor ms':>12} "
             f"{'exec vs masked':>15} {'exec vs ungated':>16}"]
    for r in result["rows"]:
        lines.append(f"{r['batch_size']:>5} {r['macs_ratio']:>10.3f} {r['ungated_ms']:>11.3f} {r['masked_ms']:>10.3f} "
                     f"{r['executor_ms']:>12.3f} {r['executor_vs_masked']:>14.2f}x {r['executor_vs_ungated']:>15.2f}x")
    return "\n".join(lines)
