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
    """The detection audit of ``gatescope analyze`` as text: per attack its success, and per
    detector the oblivious ROC-AUC [95% CI] and TPR at 5% FPR, the adaptive figures, the
    validation AUC; then the transfer matrices, per-layer AUCs and the compute attack."""
    from .adversarial.audit import audit_table, upgraded

    results = upgraded(results)
    lines = [f"detection (train/test split of source images: {results['split']['train']}/{results['split']['test']}; "
             f"figures on the test side; * = best decision-feature variant by validation AUC)"]
    table = audit_table(results)
    for attack, s in results["attacks"].items():
        lines.append(f"\n{attack} ({s.get('kind', '')}): success {s['success_rate']:.1%} of {s['attacked']} attacked; "
                     f"mean L2 {s['mean_l2']:.3f}, mean Linf {s['mean_linf']:.3f}, median margin "
                     f"{s['median_margin'] if s['median_margin'] is not None else '-'}; params {s['params']}")
        lines.append(f"  {'detector':24s} {'ROC-AUC [95% CI]':>24s} {'TPR@5%':>7s} {'val AUC':>8s} {'adaptive AUC':>13s} "
                     f"{'evaded':>7s}  test clean/adv")
        for _, r in table[table["attack"] == attack].iterrows():
            val, ada, ev = (_or_blank(r[c], f) for c, f in (("validation AUC", ".3f"), ("adaptive ROC-AUC", ".3f"),
                                                             ("adaptive evaded@5%FPR", ".1%")))
            star = "*" if r["best decision variant"] else " "
            lines.append(f" {star}{r['detector']:24s} {r['ROC-AUC']:7.3f} {r['AUC 95% CI']:>16s} {r['TPR@5%FPR']:7.3f} "
                         f"{val:>8s} {ada:>13s} {ev:>7s}  {r['test clean / adversarial']}")
    for det, matrix in results.get("transfer", {}).items():
        names = list(results["attacks"])
        lines.append(f"\ntransfer, {det} (ROC-AUC; rows: trained on, columns: tested on)")
        lines.append("  " + " " * 11 + "".join(f"{n[:10]:>11s}" for n in names))
        for train, row in matrix.items():
            lines.append(f"  {train[:10]:11s}" + "".join(f"{row[n]:11.3f}" if n in row else " " * 11 for n in names))
    if results.get("layers"):
        lines.append("\nper-layer ROC-AUC of the decision features (gate 0 first)")
        for attack, aucs in results["layers"].items():
            lines.append(f"  {attack:10s} " + " ".join(f"{a:.3f}" for a in aucs))
    return "\n".join(lines)


def markdown_detection(results: dict, compute: dict | None = None) -> str:
    """The audit as one Markdown table (README, reports): a row per detector, a column per
    attack holding the oblivious ROC-AUC, its 95% interval and the TPR at 5% FPR, and a last
    column with the adaptive attack's ROC-AUC and the share evading at 5% FPR; then the compute
    attack's table when given."""
    from .adversarial.audit import audit_table, upgraded

    results = upgraded(results)
    table = audit_table(results)
    attacks = list(results["attacks"])
    adaptive = results.get("adaptive") or {}
    against = next(iter(adaptive.values()), {}).get("attack")
    head = [f"{a} ({results['attacks'][a].get('kind', '')}, {results['attacks'][a]['success_rate']:.0%})" for a in attacks]
    lines = ["| detector | " + " | ".join(head) + (f" | adaptive {against}: AUC, evaded |" if against else " |"),
             "|---" * (len(attacks) + 1 + bool(against)) + "|"]
    for det in dict.fromkeys(table["detector"]):
        cells = []
        for a in attacks:
            r = table[(table["attack"] == a) & (table["detector"] == det)]
            if r.empty:
                cells.append("")
                continue
            r = r.iloc[0]
            auc = f"**{r['ROC-AUC']:.3f}**" if r["best decision variant"] else f"{r['ROC-AUC']:.3f}"
            cells.append(f"{auc} {r['AUC 95% CI'].replace(', ', '–')} · {r['TPR@5%FPR']:.2f}")
        if against:
            a = adaptive.get(det, {})
            cells.append(f"{a['auc']:.3f} · {a['evaded_at_5fpr']:.0%}" if a.get("auc") is not None else "")
        lines.append(f"| `{det}` | " + " | ".join(cells) + " |")
    lines.append(f"\nCells: oblivious ROC-AUC [95% bootstrap interval] · TPR at 5% FPR, on the test side "
                 f"({results['split']['test']} of the analysed source images); **bold**: the decision-feature "
                 f"variant chosen by validation AUC. Column heads: attack (kind, success rate).")
    if compute:
        lines += ["", "| eps | mean MACs before | mean after | max before | max after | > 0.75 before | > 0.75 after | prediction changed |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, r in compute["results"].items():
            b, a = r["before"], r["after"]
            lines.append(f"| {label} | {b['mean_ratio']:.3f} | {a['mean_ratio']:.3f} | {b['max_ratio']:.3f} | "
                         f"{a['max_ratio']:.3f} | {b['share_high']:.1%} | {a['share_high']:.1%} | {r['prediction_changed']:.1%} |")
    return "\n".join(lines)


ANALYSIS_STEPS = {"clean": "clean decision features", "detection": "detectors' reference statistics",
                  "compute": "compute attack", "umap": "map (UMAP)"}


def markdown_timings(entries: dict[str, dict]) -> str:
    """What each stored analysis entry cost (``AnalysisStore.entries``: the ``took`` each recorded),
    as a Markdown table in the order ``gatescope analyze`` computes them, with the total. CPU
    seconds count every thread of the process that computed the entry: unlike the wall time they
    do not grow when other work shares the machine."""
    def order(name: str) -> tuple[int, str]:
        rank = {"clean": 0, "attack": 1, "detection": 2, "compute": 4, "umap": 5}
        kind = name.split("-")[0]
        return (3 if name.startswith("detection-") else rank.get(kind, 6), name)

    lines = ["| step | wall s | CPU s |", "|---|---|---|"]
    total, timed, listed = [0.0, 0.0], 0, 0
    for name in sorted(entries, key=order):
        if order(name)[0] == 6:
            continue  # not a step of the analysis (the pages' caches of per-input outputs)
        listed += 1
        took = entries[name].get("took")
        label = ANALYSIS_STEPS.get(name) or name.replace("attack-", "attack ").replace("detection-", "detection on ")
        if took is None:
            lines.append(f"| {label} | not recorded | not recorded |")
            continue
        timed += 1
        total[0] += took["seconds"]
        total[1] += took["cpu_seconds"]
        lines.append(f"| {label} | {took['seconds']:.0f} | {took['cpu_seconds']:.0f} |")
    note = "" if timed == listed else f" ({timed} of {listed} steps recorded)"
    lines.append(f"| **total**{note} | {total[0]:.0f} | {total[1]:.0f} |")
    return "\n".join(lines)


def _or_blank(value: float, spec: str) -> str:
    return "" if value != value else format(value, spec)  # NaN: not measured


def format_compute(report: dict) -> str:
    """The compute attack's table: counted MACs ratio before and after, per eps."""
    lines = [f"compute attack (maximise counted MACs; {next(iter(report['results'].values()))['n']} inputs; "
             f"ratios to the ungated network's {report['ungated_macs']:,} MACs)",
             f"  {'eps':>7s} {'mean before':>12s} {'mean after':>11s} {'max before':>11s} {'max after':>10s} "
             f"{'>0.75 before':>13s} {'>0.75 after':>12s} {'pred. changed':>14s}"]
    for label, r in report["results"].items():
        b, a = r["before"], r["after"]
        lines.append(f"  {label:>7s} {b['mean_ratio']:12.3f} {a['mean_ratio']:11.3f} {b['max_ratio']:11.3f} "
                     f"{a['max_ratio']:10.3f} {b['share_high']:13.1%} {a['share_high']:12.1%} {r['prediction_changed']:14.1%}")
    return "\n".join(lines)
