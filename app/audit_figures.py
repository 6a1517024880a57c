"""Figures of the detection audit (pure functions of the stored results)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

MARGIN = dict(l=10, r=10, t=30, b=10)


def roc_curves(detectors: dict[str, dict]) -> go.Figure:
    """ROC curve of every detector (from stored ``fpr``/``tpr`` lists), AUC in the legend."""
    fig = go.Figure()
    for name, m in detectors.items():
        fig.add_trace(go.Scatter(x=m["fpr"], y=m["tpr"], mode="lines", name=f"{name} (AUC {m['auc']:.3f})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#BAB0AC"),
                             showlegend=False, hoverinfo="skip"))
    fig.add_vline(x=0.05, line_dash="dash", line_color="#E45756", annotation_text="5% FPR")
    fig.update_layout(xaxis_title="false-positive rate (clean flagged)", yaxis_title="true-positive rate",
                      margin=MARGIN, height=380)
    return fig


def auc_grid(table: pd.DataFrame, value: str = "ROC-AUC") -> go.Figure:
    """Detectors (rows) x attacks (columns, with their kind) coloured by ``value``; 0.5 is chance."""
    attacks = list(dict.fromkeys(table["attack"]))
    kinds = table.drop_duplicates("attack").set_index("attack")["kind"]
    detectors = list(dict.fromkeys(table["detector"]))
    grid = table.pivot(index="detector", columns="attack", values=value).reindex(index=detectors, columns=attacks)
    z = grid.to_numpy(dtype=float)
    cols = [f"{a}<br>({kinds[a]})" for a in attacks]
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=detectors, zmin=0, zmax=1, colorscale="RdBu", zmid=0.5,
                               text=[["" if np.isnan(v) else f"{v:.2f}" for v in row] for row in z],
                               texttemplate="%{text}", colorbar=dict(title=value),
                               hovertemplate="%{y} on %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(yaxis=dict(autorange="reversed"), margin=MARGIN, height=80 + 28 * len(detectors))
    return fig


def oblivious_vs_adaptive(oblivious: dict[str, float], adaptive: dict[str, float]) -> go.Figure:
    """Per detector, ROC-AUC against the oblivious attack and against the attack aimed at it."""
    names = list(adaptive)
    fig = go.Figure([go.Bar(name="oblivious", x=names, y=[oblivious.get(n) for n in names], marker_color="#4C78A8"),
                     go.Bar(name="adaptive", x=names, y=[adaptive[n] for n in names], marker_color="#E45756")])
    fig.add_hline(y=0.5, line_dash="dot", line_color="#888", annotation_text="chance")
    fig.update_layout(barmode="group", yaxis=dict(title="ROC-AUC", range=[0, 1.05]), margin=MARGIN, height=340)
    return fig


def layer_auc(aucs: list[float]) -> go.Figure:
    """ROC-AUC of a detector that sees one gated layer's decision at a time."""
    fig = go.Figure(go.Bar(x=[f"gate {i}" for i in range(len(aucs))], y=aucs, marker_color="#4C78A8",
                           text=[f"{a:.3f}" for a in aucs], textposition="outside"))
    fig.update_layout(yaxis=dict(title="ROC-AUC", range=[0.4, 1.05]), margin=MARGIN, height=300)
    return fig


def transfer_heatmap(matrix: dict[str, dict[str, float]]) -> go.Figure:
    """ROC-AUC of one detector trained on one attack (rows), tested on another (columns)."""
    rows = list(matrix)
    cols = sorted({c for r in matrix.values() for c in r}, key=lambda c: rows.index(c) if c in rows else len(rows))
    z = [[matrix[r].get(c, np.nan) for c in cols] for r in rows]
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=rows, zmin=0, zmax=1, zmid=0.5, colorscale="RdBu",
                               text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
                               hovertemplate="trained on %{y}, tested on %{x}: AUC %{z:.3f}<extra></extra>"))
    fig.update_layout(xaxis_title="tested on", yaxis=dict(title="trained on", autorange="reversed"), margin=MARGIN,
                      height=340)
    return fig


def compute_histogram(report: dict, label: str) -> go.Figure:
    """Counted MACs ratio of the inputs before and after the compute attack at budget ``label``."""
    edges = np.asarray(report["bin_edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
    r = report["results"][label]
    fig = go.Figure([go.Bar(x=centres, y=r["before"]["hist"], width=width, name="clean", opacity=0.6),
                     go.Bar(x=centres, y=r["after"]["hist"], width=width, name=f"compute attack, eps {label}",
                            opacity=0.6)])
    fig.add_vline(x=report["high_cost"], line_dash="dash", line_color="#E45756",
                  annotation_text=f"{report['high_cost']:.0%} of ungated")
    fig.update_layout(barmode="overlay", xaxis=dict(title="counted MACs / ungated MACs", tickformat=".0%"),
                      yaxis_title="inputs", margin=MARGIN, height=320)
    return fig
