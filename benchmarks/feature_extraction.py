"""What decision features cost: one extraction pass against a plain forward pass.

    python benchmarks/feature_extraction.py [RUN] [--repeats 5]

Both run over the same 1,000 test images in batches of 250, timed in one process; medians of
--repeats. The extraction pass (analysis.collect) also gathers every gated layer's action
log-probabilities, argmax path, active channels and counted MACs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from analysis import collect
from analysis.datasets import load_run_dataset
from models import load_run

from timer import median_seconds  # benchmarks/timer.py, beside this script

DEFAULT_RUN = Path(__file__).resolve().parent.parent / "assets" / "mnist5k" / "dynamic"
BATCH = 250


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", default=str(DEFAULT_RUN))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run = load_run(args.run)
    split = load_run_dataset(run.meta, "test")
    loader = torch.utils.data.DataLoader(split.dataset, batch_size=BATCH)

    def plain():
        with torch.no_grad():
            for x, _ in loader:
                run.model(x)

    collect(run.model, split, batch_size=BATCH)  # warm
    plain()
    forward = median_seconds(plain, args.repeats)
    features = median_seconds(lambda: collect(run.model, split, batch_size=BATCH), args.repeats)
    print(f"{len(split)} images, torch {torch.get_num_threads()} threads, medians of {args.repeats}")
    print(f"plain forward {forward * 1000:.0f} ms; feature extraction {features * 1000:.0f} ms; "
          f"ratio {features / forward:.2f}")


if __name__ == "__main__":
    main()
