"""Counted versus measured speed-up of a dynamic run on this CPU.

    python benchmarks/dynamic_speed.py [RUN ...] [--calls 100] [--threads 1 2] [--no-save]

For each number of threads and batch sizes 1 and 64 prints, as medians over --calls warm calls
on the run's test images: the latency of the same architecture without gates, of the masked
dynamic network (every channel computed, switched-off ones multiplied by 0) in its default and
in the channels-last layout, and of the dynamic executor (switched-off channels skipped), with
the counted MACs ratio of those inputs and the share of the counted ideal speed-up (1 / ratio)
the executor reaches over the channels-last masked network. Saves RUN/speed.json, which the app's Overview shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from analysis.datasets import load_run_dataset
from analysis.speed import format_speed, measure_speed, save_speed
from models import load_run

DEFAULT_RUN = Path(__file__).resolve().parent.parent / "assets" / "mnist5k" / "dynamic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, default=[DEFAULT_RUN])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    for path in args.runs:
        run = load_run(path)
        split = load_run_dataset(run.meta, "test")
        n = min(len(split), max(args.calls * 64, args.calls))
        images = torch.cat([x for x, _ in DataLoader(torch.utils.data.Subset(split.dataset, range(n)), batch_size=500)])
        result = measure_speed(run, images, calls=args.calls, threads=tuple(args.threads))
        print(f"{path} ({run.meta.arch}, {result['hardware']}, torch {result['torch']})")
        print(format_speed(result))
        if not args.no_save:
            print(f"saved {save_speed(run, result)}")
        print()


if __name__ == "__main__":
    main()
