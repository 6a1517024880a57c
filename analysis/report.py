"""The figures that say whether a dynamic run meets its goals (README, benchmarks, tests)."""

from __future__ import annotations

from models import Run, load_run

from .datasets import load_dataset
from .evaluation import Outputs, class_probe, collect, decision_features, macs_summary, one_hot_paths, path_diversity


def run_report(run: Run, *, baseline: Run | None = None, dataset: str | None = None, progress: bool = False) -> dict:
    """Accuracy, counted MACs distribution, path diversity and class probes of a run.

    ``dataset`` defaults to the one the run was trained on; probes are fitted on its train
    split and scored on its test split. ``baseline`` (an ungated run) adds its accuracy.
    """
    spec = dataset or run.meta.dataset
    train_split, test_split = load_dataset(spec, "train"), load_dataset(spec, "test")
    test = collect(run.model, test_split, progress=progress)
    report: dict = {"run": str(run.path), "dataset": spec, "test_images": len(test.labels),
                    "test_accuracy": test.accuracy, "macs_ratio": macs_summary(test),
                    "ungated_macs": test.ungated_macs}
    if baseline is not None:
        base = collect(baseline.model, test_split, progress=progress)
        report["baseline"] = {"run": str(baseline.path), "test_accuracy": base.accuracy}
        report["accuracy_gap"] = base.accuracy - test.accuracy
    if test.paths.shape[1]:
        train = collect(run.model, train_split, progress=progress)
        report["diversity"] = path_diversity(test)
        report["probe_log_probs"] = _probe(train, test, decision_features)
        report["probe_one_hot_paths"] = _probe(train, test, one_hot_paths)
    return report


def _probe(train: Outputs, test: Outputs, features) -> float:
    return class_probe(features(train), train.labels, features(test), test.labels)


def format_report(report: dict) -> str:
    """Human-readable lines of a ``run_report``."""
    m = report["macs_ratio"]
    lines = [
        f"run: {report['run']}  dataset: {report['dataset']} ({report['test_images']} test images)",
        f"1. test accuracy: {report['test_accuracy']:.4f}",
    ]
    if "baseline" in report:
        b = report["baseline"]
        lines.append(f"   ungated baseline: {b['test_accuracy']:.4f} ({b['run']}); gap {report['accuracy_gap'] * 100:+.2f} points")
    lines.append(
        f"2. counted MACs / ungated MACs ({report['ungated_macs']:,}): mean {m['mean']:.3f}, "
        f"min {m['min']:.3f}, median {m['median']:.3f}, max {m['max']:.3f}"
    )
    if "diversity" in report:
        d = report["diversity"]
        lines += [
            f"3. distinct actions per gated layer: {d['distinct_actions_per_layer']}; distinct paths "
            f"{d['distinct_paths']}; commonest path share {d['top_path_share']:.3f}",
            f"   class probe on standardised log-probabilities: {report['probe_log_probs']:.4f}",
            f"   class probe on one-hot argmax paths: {report['probe_one_hot_paths']:.4f}",
        ]
    return "\n".join(lines)


def report_for_path(path: str, baseline: str | None = None, dataset: str | None = None) -> dict:
    return run_report(load_run(path), baseline=load_run(baseline) if baseline else None, dataset=dataset)
