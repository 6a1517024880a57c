"""A run as one self-contained HTML file to present (``gatescope report RUN --html OUT``, and the
Overview's download): the model card, the counted MACs distribution, path health, one Sankey of
decision paths per class and, where ``RUN/analysis/`` holds them, the decision-feature map and
the detection audit.

Offline by construction: plotly's JavaScript is inlined once, each figure is a ``<div>`` and a
call to ``Plotly.newPlot``, and nothing refers to a URL (no CDN, no MathJax, no web fonts). No
Streamlit here: the CLI builds the same file.

>>> from models import load_run
>>> page = html_report(load_run("assets/mnist5k/dynamic"))  # str, about 5 MB
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from analysis import DatasetError, Outputs, collect, macs_summary, path_diversity
from analysis.adversarial.audit import audit_table, upgraded
from analysis.adversarial.compute_attack import compute_table
from analysis.datasets import load_run_dataset
from analysis.path_health import (
    class_entropy, decision_entropy, health_over_epochs, path_health_table, transition_counts,
)
from analysis.paths import sankey_links
from analysis.speed import load_speed, speed_table
from analysis.store import AnalysisStore
from app import audit_figures, figures, health_figures
from models import Run, cost_model, gated_convs
from models.checkpoint import package_version
from models.files import atomic_write_bytes

MAP_POINTS = 10_000  # points of the decision-feature map kept in the file (the page keeps 20,000)
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}  # no logo link to plotly.com in the mode bar
COLLAPSE_SHARE = 0.9  # as on the Overview: one action chosen by more than this share of a gate's inputs
PERCENT = ("share", "costlier", "prediction changed")  # columns of the compute table shown as percentages


def html_report(run: Run, *, split: str = "test", dataset: str | None = None, baseline: Run | None = None,
                outputs: Outputs | None = None, log: Callable[[str], None] = lambda s: None,
                progress: bool = False) -> str:
    """The report of ``run`` as one HTML document (a str, plotly's JavaScript inlined).

    Per-input figures are on ``split`` of the run's dataset (``dataset`` overrides the spec, as
    ``gatescope report --dataset`` does); ``outputs`` reuses a pass already made over it, and
    ``baseline`` (an ungated run) adds its accuracy. Raises :class:`DatasetError` naming the
    dataset when it cannot be opened here. ``log`` receives a line as each step begins."""
    meta = run.meta if dataset is None else dataclasses.replace(run.meta, dataset=dataset)
    page = _Page()
    log("model card")
    _card(page, run)
    data = _split(meta, split) if outputs is None or baseline is not None else None
    if outputs is None:
        log(f"per-input outputs of the {split} split ({len(data):,} images)")
        outputs = collect(run.model, data, progress=progress)
    base = None
    if baseline is not None:
        log(f"the baseline {baseline.path} on the {split} split")
        base = collect(baseline.model, data, progress=progress).accuracy
    log("counted MACs and training")
    _cost(page, run, outputs, split, base)
    log("path health")
    _health(page, run, outputs, split)
    log("decision paths per class")
    _sankeys(page, run, outputs, split)
    store = AnalysisStore(run)
    log("decision-feature map")
    _map(page, run, store)
    log("detection")
    _detection(page, run, store)
    title = f"{run.meta.arch} on {run.meta.dataset}"
    return page.document(title, f"Run folder <code>{_e(run.path)}</code>; per-input figures on the {_e(split)} "
                                f"split of <code>{_e(meta.dataset)}</code>. Written {time.strftime('%Y-%m-%d %H:%M')} "
                                f"by gatescope {_e(package_version())}.")


def write_html_report(run: Run, out: str | Path, **options) -> Path:
    """Write :func:`html_report` of ``run`` to ``out`` atomically (readers see the old file or the
    whole new one); ``options`` as for :func:`html_report`. Returns the path written."""
    out = Path(out)
    atomic_write_bytes(out, html_report(run, **options).encode("utf-8"))
    return out


def _split(meta, split: str):
    try:
        return load_run_dataset(meta, split)
    except DatasetError as e:
        raise DatasetError(f"the report runs the model over the {split} split of `{meta.dataset}`, which cannot be "
                           f"opened here: {e}") from None


class _Page:
    """Sections of the document, in order, and the figures they hold."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.sections: list[tuple[str, str]] = []  # (anchor, title) for the contents
        self.figures = 0

    def section(self, anchor: str, title: str) -> None:
        self.sections.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{_e(title)}</h2>')

    def heading(self, title: str) -> None:
        self.parts.append(f"<h3>{_e(title)}</h3>")

    @contextmanager
    def block(self, cls: str):
        """Everything added inside goes into one ``<div class=cls>`` (``cols``: side by side)."""
        self.parts.append(f'<div class="{cls}">')
        yield
        self.parts.append("</div>")

    def text(self, text: str, *, cls: str = "") -> None:
        """A paragraph; `backticks` become code, everything else is escaped."""
        self.parts.append(f'<p{_class(cls)}>{_code(text)}</p>')

    def missing(self, text: str) -> None:
        self.text(text, cls="missing")

    def table(self, frame: pd.DataFrame, *, cls: str = "", wide: bool = False, head: bool = True) -> None:
        """A table of ``frame``'s cells as :func:`_cell` shows them (escaped; a newline breaks the
        line); ``wide`` scrolls sideways, ``head`` shows the column names."""
        def cells(tag: str, values) -> str:
            return "".join(f"<{tag}>{_e(_cell(v)).replace(chr(10), '<br>')}</{tag}>" for v in values)

        heading = f"<thead><tr>{cells('th', frame.columns)}</tr></thead>" if head else ""
        rows = "".join(f"<tr>{cells('td', row)}</tr>" for row in frame.itertuples(index=False))
        table = f'<table{_class(cls)}>{heading}<tbody>{rows}</tbody></table>'
        self.parts.append(f'<div class="wide">{table}</div>' if wide else table)

    def pairs(self, rows: dict[str, object]) -> None:
        """A two-column table (field, value)."""
        self.table(pd.DataFrame({"field": list(rows), "value": list(rows.values())}), cls="card", head=False)

    def figure(self, fig: go.Figure, caption: str = "") -> None:
        self.parts.append(self.figure_html(fig, caption))

    def figure_html(self, fig: go.Figure, caption: str = "") -> str:
        """The figure as a div that the inlined plotly draws, with its caption (counted, not yet placed)."""
        self.figures += 1
        div = fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False, config=PLOTLY_CONFIG,
                          div_id=f"figure-{self.figures}", default_height=f"{fig.layout.height or 450}px")
        return f"<figure>{div}{f'<figcaption>{_code(caption)}</figcaption>' if caption else ''}</figure>"

    def grid(self, parts: list[str]) -> None:
        """Figures (from :meth:`figure_html`) laid out side by side, as many to a row as fit."""
        self.parts.append(f'<div class="grid">{"".join(parts)}</div>')

    def document(self, title: str, subtitle: str) -> str:
        contents = "".join(f'<li><a href="#{a}">{_e(t)}</a></li>' for a, t in self.sections)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<meta name="gatescope-figures" content="{self.figures}">'
                f"<title>{_e(title)}: gatescope report</title><style>{CSS}</style>"
                f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
                f'<body data-figures="{self.figures}"><main><header><h1>{_e(title)}</h1><p>{subtitle}</p>'
                f"<p>This report holds {self.figures} figures; it needs no network and no gatescope to open. "
                f"Hover a figure for values; its toolbar saves it as a PNG.</p>"
                f'<nav><ol>{contents}</ol></nav></header>{"".join(self.parts)}</main></body></html>\n')


CSS = """
body{margin:0;background:#fafafa;color:#222;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
main{max-width:1280px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{margin:0 0 4px;font-size:28px}h2{margin:40px 0 8px;padding-top:8px;border-top:2px solid #4C78A8;font-size:22px}
h3{margin:24px 0 6px;font-size:17px}code{font:13px ui-monospace,Menlo,Consolas,monospace;background:#f0f0f0;padding:1px 4px;border-radius:3px}
nav ol{columns:2;margin:8px 0}p.missing{color:#6F6F6F;font-style:italic}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}th{background:#f3f5f8}
table.card td:first-child{color:#555;white-space:nowrap}table.card td{word-break:break-word}table.audit td{font-size:12px}
.cols{display:flex;flex-wrap:wrap;gap:0 40px;align-items:flex-start}.col{flex:1 1 300px;min-width:0}.wide{overflow-x:auto}
figure{margin:12px 0 20px;break-inside:avoid}figcaption{color:#555;font-size:13px;margin-top:2px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:8px 24px}
@media print{main{max-width:none;padding:0}h2{break-before:auto}}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _class(cls: str) -> str:
    return f' class="{cls}"' if cls else ""


def _code(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


def _cell(value: object) -> object:
    """A value as a table shows it: floats to 4 significant digits, lists joined, NaN blank."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "", None: ""}[value]
    if isinstance(value, float | np.floating):
        return "" if value != value else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(_cell(v)) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def _flat(values: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as one level, keys joined by dots (``macs_ratio.mean``)."""
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _card(page: _Page, run: Run) -> None:
    meta = run.meta
    gates = gated_convs(run.model)
    page.section("card", "Model card")
    training = {**meta.training.get("config", {}), **{k: v for k, v in meta.training.items() if k != "config"}}
    with page.block("cols"):
        with page.block("col"):
            page.heading("Network")
            page.pairs({
                "architecture": meta.arch,
                "architecture arguments": ", ".join(f"{k}={v}" for k, v in meta.arch_args.items()),
                "dataset": meta.dataset, f"classes ({len(meta.class_names)})": meta.class_names,
                "input shape (C, H, W)": " × ".join(map(str, meta.input_shape)),
                "normalisation": f"mean {_cell(meta.mean)}; std {_cell(meta.std)}",
                "ungated MACs (counted)": f"{cost_model(run.model, tuple(meta.input_shape)).ungated_macs:,}",
                "gated layers": len(gates),
                "masks per gated layer (K)": meta.arch_args.get("num_actions", "-") if gates else "-",
                "weights SHA-256": f"{meta.weights_sha256[:16]}...", "written by gatescope": meta.version or "unknown",
            })
        for title, values in (("Training", training), ("Metrics (recorded in model.json)", meta.metrics)):
            with page.block("col"):
                page.heading(title)
                if values:
                    page.pairs(_flat(values))
                else:
                    page.missing(f"model.json records no {title.split()[0].lower()}.")


def _training_log(run: Run) -> pd.DataFrame:
    file = run.path / "train_log.jsonl"
    if not file.is_file():
        return pd.DataFrame()
    return pd.DataFrame([json.loads(line) for line in file.read_text().splitlines() if line.strip()])


def _cost(page: _Page, run: Run, out: Outputs, split: str, baseline: float | None) -> None:
    s = macs_summary(out)
    page.section("cost", "Counted MACs per input")
    rows = {"inputs": f"{len(out.labels):,} ({split} split)", "accuracy (recomputed)": f"{out.accuracy:.2%}",
            "mean counted MACs": f"{s['mean']:.1%} of the ungated network", "median": f"{s['median']:.1%}",
            "min / max": f"{s['min']:.1%} / {s['max']:.1%}"}
    if baseline is not None:
        rows["ungated baseline accuracy"] = f"{baseline:.2%} (gap {(baseline - out.accuracy) * 100:+.2f} points)"
    page.pairs(rows)
    page.figure(figures.macs_histogram(out.macs_ratio),
                "Counted (theoretical) MACs of each input over those of the same network without gates.")
    speed = load_speed(run)
    if speed:
        page.heading("Measured speed")
        page.text(f"Milliseconds per call on {speed['hardware']}, torch {speed['torch']}: the network without gates, "
                  "the masked network (switched-off channels multiplied by 0; also with channels-last weights) and the "
                  "dynamic executor (skipped).")
        page.table(speed_table(speed))
    log = _training_log(run)
    if not log.empty and {"phase", "epoch", "test_acc", "test_macs_ratio"} <= set(log.columns):
        page.heading("Training curves")
        page.figure(figures.training_curves(log), "Test accuracy and counted MACs ratio after each epoch.")


def _health(page: _Page, run: Run, out: Outputs, split: str) -> None:
    page.section("health", "Path health")
    gates = out.paths.shape[1]
    if not gates:
        page.missing("This run has no gated layers: every input takes the same path.")
        return
    k = out.log_probs.shape[2]
    counts = np.stack([np.bincount(out.paths[:, l], minlength=k) for l in range(gates)])
    collapsed = [l for l in range(gates) if counts[l].max() > COLLAPSE_SHARE * len(out.paths)]
    if collapsed:
        page.text(f"Collapse: in gate(s) {collapsed} one action is chosen by more than {COLLAPSE_SHARE:.0%} of the "
                  "inputs; those layers behave like static ones.", cls="missing")
    d = path_diversity(out)
    page.text(f"On the {split} split: {d['distinct_paths']:,} distinct paths of {len(out.paths):,} inputs (the "
              f"commonest taken by {d['top_path_share']:.1%}); actions never chosen per gate: "
              + ", ".join(f"gate {l}: {int((counts[l] == 0).sum())}/{k}" for l in range(gates)) + ".")
    page.figure(figures.action_usage(out.paths, k), "Share of the inputs choosing each action (mask) at each gate.")
    health = path_health_table(out.log_probs, out.paths, out.labels)
    page.table(health.drop(columns="entropy_max").rename(columns={
        "entropy": "mean entropy (bits)", "mi": "I(class; action) (bits)", "mi_share": "share of H(class)",
        "utilisation": "utilisation (max share × K)", "actions_used": f"actions used (of {k})"}))
    bars = health_figures.health_bars(decision_entropy(out.log_probs), health, class_entropy=class_entropy(out.labels))
    for box in bars.select_traces(selector=dict(type="box")):  # its name places each box: drop the per-input x labels, halve y
        box.update(x=None, y=np.asarray(box.y, dtype=np.float32))
    page.figure(bars,
                f"In bits. Decision entropy of each input's action distribution (0: one action certain; log2 K = "
                f"{np.log2(k):.2f}: all {k} equally likely); I(class; action), what the chosen action says about "
                f"the class (plug-in estimate, at most H(class)); utilisation, the commonest action's share times K "
                f"(1: even use; {k}: collapse).")
    if gates > 1:
        page.heading("Transitions between consecutive gates")
        parts = [page.figure_html(health_figures.transition_heatmap(transition_counts(out.paths, l, k), l, shares=True),
                             f"Gate {l} to gate {l + 1}: share of each row's inputs (actions used only).")
                 for l in range(gates - 1)]
        page.grid(parts)
    history = health_over_epochs(_training_log(run))
    if not history.empty:
        page.heading("Path health over training")
        page.figure(health_figures.health_evolution(history), "On the test split, evaluated after each epoch.")


def _sankeys(page: _Page, run: Run, out: Outputs, split: str) -> None:
    page.section("paths", "Decision paths per class")
    if not out.paths.shape[1]:
        page.missing("This run has no gated layers: every input takes the same path.")
        return
    page.text(f"Clean inputs of the {split} split, one class per figure: nodes are gate:action (g0:a3 is action 3 "
              "at gate 0), links carry the inputs that took one action and then the next.")
    names = run.meta.class_names
    parts = []
    for c, name in enumerate(names):
        paths = out.paths[out.labels == c]
        if len(paths) == 0:
            continue
        parts.append(page.figure_html(figures.sankey(*sankey_links(paths), title=f"class {name} ({len(paths):,} inputs)")))
    page.grid(parts)
    if len(parts) < len(names):
        page.missing(f"{len(names) - len(parts)} class(es) have no input on the {split} split.")


def _audit_cells(table: pd.DataFrame, results: dict, adaptive: dict) -> pd.DataFrame:
    """The audit as :func:`analysis.report.markdown_detection` lays it out: a row per detector,
    a column per attack (oblivious AUC [interval] · TPR at 5% FPR) and one for the adaptive attack."""
    def cell(r) -> str:
        return (f"{r['ROC-AUC']:.3f}{' ★' if r['best decision variant'] else ''} · {r['TPR@5%FPR']:.2f}\n"
                f"{r['AUC 95% CI'].replace(', ', '–')}")  # two lines (the table keeps line breaks)

    heads = {a: f"{a} ({s.get('kind', '')}, {s['success_rate']:.0%})" for a, s in results["attacks"].items()}
    cells = table.assign(cell=table.apply(cell, axis=1)).pivot(index="detector", columns="attack", values="cell")
    detectors = list(dict.fromkeys(table["detector"]))
    cells = cells.reindex(index=detectors, columns=[a for a in heads if a in cells.columns]).rename(columns=heads)
    cells.columns.name = None
    if adaptive:
        against = next(iter(adaptive.values()))["attack"]
        cells[f"adaptive {against}: AUC · evaded"] = [
            f"{adaptive[d]['auc']:.3f} · {adaptive[d]['evaded_at_5fpr']:.0%}"
            if adaptive.get(d, {}).get("auc") is not None else "" for d in detectors]
    return cells.reset_index()


def _missing_analysis(run: Run, store: AnalysisStore, what: str) -> str:
    if store.stale():
        return (f"The stored analysis of this run was computed from other weights, so {what} are not shown: "
                f"run `gatescope analyze {run.path}` again.")
    return f"No {what} stored for this run: run `gatescope analyze {run.path}`."


def _map(page: _Page, run: Run, store: AnalysisStore) -> None:
    page.section("map", "Decision-feature map")
    params = store.params("umap")
    if params is None:
        page.missing(_missing_analysis(run, store, "decision-feature map"))
        return
    stored = store.table("umap", "points")
    points, thinned = figures.thin_points(stored, MAP_POINTS)
    counts = points["kind"].value_counts()
    fig = figures.decision_map(points, run.meta.class_names)
    fig.update_layout(dragmode="zoom")  # nothing to select in a report; zoom in instead
    page.figure(fig, f"UMAP ({params.get('neighbors')} neighbours, min. distance {params.get('min_dist')}) of the "
                     f"decision features, fitted on the clean inputs of the {params.get('split', 'test')} split; "
                     f"attacked inputs (successful attacks only) transformed into it. Colour: true class; marker: "
                     "clean or the attack. " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + ".")
    if thinned:
        page.text(f"The map shows {len(points):,} of the {len(stored):,} stored points (a random sample, rare kinds "
                  "kept whole), to keep this file small.")


def _detection(page: _Page, run: Run, store: AnalysisStore) -> None:
    page.section("detection", "Adversarial detection")
    if store.params("detection") is None:
        page.missing(_missing_analysis(run, store, "detection results"))
        return
    results = upgraded(store.data("detection"))
    params = store.params("detection")
    table = audit_table(results)
    analysed = f"its first {params['limit']:,} images" if params.get("limit") else "all its images"
    page.text(f"The {params.get('split', 'test')} split, {analysed}; successful attacks only. Clean and attacked "
              f"versions of an image fall on the same side of a {results['split']['train']}/{results['split']['test']} "
              "split; detectors train on the training side and choose hyperparameters on a validation part of it; "
              "every figure is on the test side, with bootstrap 95% intervals.")
    page.figure(audit_figures.auc_grid(table), "ROC-AUC per detector and attack (0.5 is chance). Minimal attacks stop "
                                               "just across the decision boundary, confident ones push past it.")
    page.heading("The audit table")
    adaptive = results.get("adaptive") or {}
    page.table(_audit_cells(table, results, adaptive), cls="audit", wide=True)
    page.text("Cells: oblivious ROC-AUC · TPR at 5% FPR on the test side, and below them the AUC's bootstrap 95% "
              "interval; ★ the decision-feature "
              "variant chosen by validation AUC. Column heads: attack (kind, success rate). The Detection page and "
              "`gatescope report RUN` give every column (validation AUC, sample counts).")
    if adaptive:
        attacked = next(iter(adaptive.values()))["attack"]
        page.heading(f"Every detector attacked: oblivious vs adaptive {attacked}")
        oblivious = {d: m["auc"] for d, m in results["attacks"][attacked]["detectors"].items()}
        page.figure(audit_figures.oblivious_vs_adaptive(oblivious, {d: a["auc"] for d, a in adaptive.items() if "auc" in a}),
                    f"An adaptive attack knows the detector: {attacked} that also lowers the detector's score.")
    page.heading("ROC curves per attack")
    parts = []
    for attack, s in results["attacks"].items():
        if s["detectors"]:
            fig = audit_figures.roc_curves(s["detectors"])
            fig.update_layout(title=f"{attack} ({s.get('kind', '')}): {s['success_rate']:.1%} of {s['attacked']} flipped",
                              margin=dict(l=10, r=10, t=40, b=10), height=420)
            parts.append(page.figure_html(fig))
    page.grid(parts)
    compute = store.data("compute") if store.params("compute") is not None else None
    if compute:
        page.heading("Compute as an attack surface")
        page.text("The compute attack maximises the counted MACs within an L-inf ball; figures are the counted MACs "
                  "of the argmax decisions, before and after.")
        ctable = compute_table(compute)
        for column in ctable.columns:
            if column.startswith(PERCENT):
                ctable[column] = [f"{v:.1%}" for v in ctable[column]]
        page.table(ctable)
        label = list(compute["results"])[-1]
        page.figure(audit_figures.compute_histogram(compute, label), f"The largest budget, eps {label}.")
