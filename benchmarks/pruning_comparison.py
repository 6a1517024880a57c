"""The table a user of "Pruning from Scratch" wants, on one dataset and architecture.

    python benchmarks/pruning_comparison.py [--dataset mnist5k] [--arch small_cnn] [--out runs/pruning-comparison]

For each MACs reduction p it trains, from fresh random weights with the Scratch-B budget
(base epochs / (1 - p)) and the same seed:
  (a) the structure found from gates learned on frozen *random* weights,
  (b) a uniform-width network of the same MACs,
  (c) the structure found from gates learned on the *fully trained* unpruned network,
and prints their test accuracy next to the unpruned network's, with the wall time of each
pipeline (gate learning + search + training; (c) also pays for training the unpruned network).
Every step is a run folder under --out; rerunning skips what is finished (times are read
from each run's model.json, so they survive a rerun).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from analysis.datasets import load_dataset
from analysis.pruning import uniform_structure
from analysis.scratch import (
    GateConfig, ScratchConfig, build_pruned, default_widths, learn_gates, save_structure, train_pruned,
)
from analysis.training import run_meta
from models import build_model, cost_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--base-epochs", type=int, default=20, help="epochs of the unpruned network")
    parser.add_argument("--gate-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/pruning-comparison"))
    args = parser.parse_args()
    quiet = {"progress": False, "log": lambda s: None}
    scratch = ScratchConfig(base_epochs=args.base_epochs, seed=args.seed)

    # the unpruned network: a full-width "structure" (p = 0) trained with the base budget
    split = load_dataset(args.dataset, "train")
    meta = run_meta(args.arch, split, gated=False)
    costs = cost_model(build_model(meta), split.input_shape)
    full = default_widths(args.arch, split.input_shape[0])
    unpruned = uniform_structure(costs, 0.0)
    save_structure(meta, unpruned, args.out / "unpruned-built", seed=args.seed)
    base = train_pruned(args.out / "unpruned-built", args.out / "unpruned", scratch, **quiet)
    t_base = base.training["seconds"]
    print(f"unpruned {args.arch} on {args.dataset}: test accuracy {base.metrics['test_accuracy']:.4f} "
          f"({args.base_epochs} epochs, {t_base:.0f} s)", flush=True)

    gates = {}
    for name, init in (("random", ""), ("trained", str(args.out / "unpruned"))):
        config = GateConfig(arch=args.arch, dataset=args.dataset, seed=args.seed, epochs=args.gate_epochs, init_from=init)
        gates[name] = learn_gates(config, args.out / f"gates-{name}", **quiet).training["seconds"]

    rows = []
    for p in args.targets:
        def from_gates(name, out):
            return build_pruned(args.out / f"gates-{name}", p, out, seed=args.seed)[0]

        def uniform(out):
            structure = uniform_structure(costs, p)
            save_structure(meta, structure, out, seed=args.seed)
            return structure

        variants = (  # name, builder, seconds spent before the search
            ("(a) random-weight gates", lambda out: from_gates("random", out), gates["random"]),
            ("(b) uniform width", uniform, 0.0),
            ("(c) trained-weight gates", lambda out: from_gates("trained", out), t_base + gates["trained"]),
        )
        for name, build, t_before in variants:
            key = f"p{round(p * 100):02d}-{name[1]}"
            t0 = time.perf_counter()
            structure = build(args.out / f"{key}-built")
            t_build = time.perf_counter() - t0
            trained = train_pruned(args.out / f"{key}-built", args.out / key, scratch, **quiet)
            rows.append((p, name, structure, trained.metrics["test_accuracy"], trained.training["epochs"],
                         t_before + t_build + trained.training["seconds"]))
            print(f"p={p}: {name}: acc {trained.metrics['test_accuracy']:.4f}, widths {structure.widths}", flush=True)

    acc0 = base.metrics["test_accuracy"]
    print("\n| p | pipeline | widths | MACs removed | params | epochs | test acc | vs unpruned | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| 0 | unpruned | {full} | 0.0% | {unpruned.params:,.0f} | {args.base_epochs} | {acc0:.4f} | - | {t_base:.0f} |")
    for p, name, s, acc, epochs, t in rows:
        print(f"| {p} | {name} | {s.widths} | {s.reduction:.1%} | {s.params:,.0f} | {epochs} | {acc:.4f} | "
              f"{(acc - acc0) * 100:+.2f} pt | {t:.0f} |")


if __name__ == "__main__":
    main()
