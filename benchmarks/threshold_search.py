"""How fast the threshold searches are: the figures behind the live pruning slider.

    python benchmarks/threshold_search.py [--runs 50]

Prints, as medians over --runs warm calls:
  1. one static search on a ResNet-56 gate set and on the default network's gate set
     (analytic, from widths), next to a naive search that builds and traces a real network
     at each bisection step, and their ratio;
  2. one full slider step on the shipped dynamic model: mask-threshold search + evaluations
     of the thresholded model on the 1,000 mnist5k test images (searched again on its own
     decisions until the choice repeats, as the Pruning page does).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from analysis import collect
from analysis.datasets import load_run_dataset
from analysis.pruning import MaskSearch, StaticSearch, mask_banks, refined_mask_threshold
from models import cost_model, create_model, load_run

DEFAULT_RUN = Path(__file__).resolve().parent.parent / "assets" / "mnist5k" / "dynamic"
EVAL_BATCH = 250  # small enough to stay in cache on a 2-core CPU


def _median_ms(fn, args_list) -> float:
    times = []
    for args in args_list:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _naive_search(name: str, shape, gates: list[np.ndarray], target: float, steps: int = 10) -> list[int]:
    """The reference method: bisect the pruned fraction, building and counting a real network each step."""
    values = np.sort(np.concatenate(gates))
    lo, hi, widths = 0.0, 1.0, None
    full = cost_model(create_model(name, gated=False, in_channels=shape[0]), shape).ungated_macs
    for _ in range(steps):
        mid = (lo + hi) / 2
        t = values[min(int(mid * len(values)), len(values) - 1)]
        widths = [max(1, int((g > t).sum())) for g in gates]
        macs = cost_model(create_model(name, gated=False, widths=widths, in_channels=shape[0]), shape).ungated_macs
        lo, hi = (mid, hi) if macs > (1 - target) * full else (lo, mid)
    return widths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    targets = rng.uniform(0.1, 0.9, size=args.runs)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.runs} runs\n")

    print("1. static threshold search (warm)")
    for name, shape in (("resnet56", (3, 32, 32)), ("small_cnn", (1, 28, 28))):
        costs = cost_model(create_model(name, gated=False, in_channels=shape[0]), shape)
        gates = [rng.random(w) for w in costs.source_widths]
        search = StaticSearch(costs, gates)
        search(0.5)  # warm
        fast = _median_ms(search, [(p,) for p in targets])
        naive = _median_ms(lambda p: _naive_search(name, shape, gates, p), [(p,) for p in targets[:5]])
        print(f"   {name:9s} ({sum(costs.source_widths)} gates): analytic {fast:.3f} ms, "
              f"build-per-step {naive:.1f} ms, ratio {naive / fast:,.0f}x")

    print("\n2. slider step on the shipped dynamic model (search + evaluations of 1,000 test images)")
    run = load_run(DEFAULT_RUN)
    test = load_run_dataset(run.meta, "test")
    cached = collect(run.model, test, batch_size=EVAL_BATCH)
    search = MaskSearch(cost_model(run.model, tuple(run.meta.input_shape)), mask_banks(run.model), cached.paths)
    slider = rng.uniform(0.55, 0.8, size=args.runs)
    search_ms = _median_ms(search, [(p,) for p in slider])

    def step(p):  # as the Pruning page: searched again on the thresholded model's own decisions
        return refined_mask_threshold(run.model, test, search, p, batch_size=EVAL_BATCH)

    step_ms = _median_ms(step, [(p,) for p in slider[:max(11, args.runs // 5)]])
    plain_ms = _median_ms(lambda: collect(run.model, test, batch_size=EVAL_BATCH), [()] * 5)
    print(f"   mask search {search_ms:.2f} ms; full step {step_ms:.0f} ms; "
          f"plain evaluation of the unthresholded model {plain_ms:.0f} ms (step / plain {step_ms / plain_ms:.2f})")


if __name__ == "__main__":
    main()
