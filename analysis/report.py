"""The figures that say whether a dynamic run meets its goals (README, benchmarks, tests)."""

from __future__ import annotations

import dataclasses

from models import Run, load_run

from .datasets import load_run_dataset
from .evaluation import Outputs, class_probe, collect, decision_features, macs_summary, one_hot_paths, path_diversity


def run_report(run: Run, *, baseline: Run | None = None, dataset: str | None = None, progress: bool = False) -> dict:
    """Accuracy, counted MACs distribution, path diversity and class probes of a run.

    ``dataset`` defaults to the one the run was trained on; probes are fitted on its train
    split and scored on its test split. ``baseline`` (an ungated run) adds its accuracy.
    """
    spec = dataset or run.meta.dataset
    meta = dataclasses.replace(run.meta, dataset=spec)
    train_split, test_split = load_run_dataset(meta, "train"), load_run_dataset(meta, "test")
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


def format_detection(results: dict) -> str:
    """The detection table of ``gatescope analyze``: per attack, its success and size, and per
    detector ROC-AUC, TPR at 5% FPR and accuracy with bootstrap 95% intervals."""
    lines = [f"detection (train/test split of source images: {results['split']['train']}/{results['split']['test']})"]
    for attack, s in results["attacks"].items():
        lines.append(f"\n{attack}: success {s['success_rate']:.1%} of {s['attacked']} attacked; mean L2 "
                     f"{s['mean_l2']:.3f}, mean Linf {s['mean_linf']:.3f}; params {s['params']}")
        lines.append(f"  {'detector':16s} {'ROC-AUC [95% CI]':>24s} {'TPR@5%FPR [95% CI]':>24s} {'accuracy':>9s}")
        for name, m in s["detectors"].items():
            lines.append(f"  {name:16s} {m['auc']:7.3f} [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]    "
                         f"{m['tpr_at_5fpr']:7.3f} [{m['tpr_at_5fpr_ci'][0]:.3f}, {m['tpr_at_5fpr_ci'][1]:.3f}]    "
                         f"{m['accuracy']:6.3f}")
    if results.get("transfer"):
        names = list(results["attacks"])
        lines.append("\ntransfer (decision-logreg ROC-AUC; rows: trained on, columns: tested on)")
        lines.append("  " + " " * 10 + "".join(f"{n:>10s}" for n in names))
        for train, row in results["transfer"].items():
            lines.append(f"  {train:10s}" + "".join(f"{row.get(n, float('nan')):10.3f}" for n in names))
    if results.get("layers"):
        lines.append("\nper-layer ROC-AUC of the decision features (gate 0 first)")
        for attack, aucs in results["layers"].items():
            lines.append(f"  {attack:10s} " + " ".join(f"{a:.3f}" for a in aucs))
    a = results.get("adaptive")
    if a:
        extra = (f"; detector ROC-AUC {a['auc']:.3f}, evades at 5% FPR {a['evaded_at_5fpr']:.1%}" if "auc" in a
                 else "; too few successes to score the detector")
        lines.append(f"\nadaptive PGD (detector logit weight {a['weight']}): success {a['success_rate']:.1%} of "
                     f"{a['attacked']}{extra}")
    return "\n".join(lines)
