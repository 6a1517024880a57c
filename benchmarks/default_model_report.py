"""Print the foundation issue's acceptance figures (items 1-3) for any dynamic run folder.

    python benchmarks/default_model_report.py [RUN] [--baseline BASELINE_RUN]

Defaults to the shipped model and its ungated baseline. Figures are counted MACs (theoretical),
accuracy on the run's own test split, path diversity and the two class probes; the wall time of
the evaluation is printed too.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from analysis.report import format_report, report_for_path

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "mnist5k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", default=str(ASSETS / "dynamic"))
    parser.add_argument("--baseline", default=None, help="ungated run (default: the shipped baseline when RUN is the default)")
    parser.add_argument("--dataset", default=None, help="dataset spec (default: the run's own)")
    args = parser.parse_args()
    baseline = args.baseline or (str(ASSETS / "baseline") if args.run == str(ASSETS / "dynamic") else None)
    t0 = time.perf_counter()
    report = report_for_path(args.run, baseline, args.dataset)
    print(format_report(report))
    print(f"(evaluated in {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
