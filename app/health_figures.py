"""Figures of path health (analysis.path_health): pure functions of its arrays and tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly import colors
from plotly.subplots import make_subplots

MARGIN = dict(l=10, r=10, t=40, b=10)
REFERENCE = dict(line_dash="dot", line_color="#BAB0AC", annotation_font_color="#6F6F6F",
                 annotation_bgcolor="rgba(255,255,255,0.8)")  # reference lines; labels stay legible over bars


def _gate_colour(gate: int) -> str:
    palette = colors.qualitative.Plotly
    return palette[gate % len(palette)]


def box_statistics(values: np.ndarray) -> dict[str, list[float]]:
    """A box plot's numbers, as plotly computes them from raw points (quartiles by linear
    interpolation, whiskers at the furthest points within 1.5 IQR, the mean), in the form
    ``go.Box(**...)`` takes them precomputed: the browser then receives eight numbers instead of
    every input's value (a CIFAR-10 test split's would be 1.3 MB per figure)."""
    values = np.asarray(values, dtype=float)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    reach = 1.5 * (q3 - q1)
    lower, upper = values[values >= q1 - reach].min(), values[values <= q3 + reach].max()
    return {k: [float(v)] for k, v in dict(q1=q1, median=median, q3=q3, lowerfence=lower, upperfence=upper,
                                          mean=values.mean()).items()}


def health_bars(entropy: np.ndarray, table: pd.DataFrame, *, class_entropy: float) -> go.Figure:
    """Three panels over the gates: the distribution over inputs of the decision entropy
    ((N, L), bits; mean dashed) against log2 K, I(class; action) against H(class), and the
    utilisation ratio against its even-use floor of 1 (``table`` from
    :func:`analysis.path_health.path_health_table`; K, the collapse value, is in the hover)."""
    gates = [f"gate {g}" for g in table["gate"]]
    k = int(round(2 ** table["entropy_max"].iloc[0]))
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "decision entropy per input (bits)", "I(class; action) (bits)", "utilisation (max share × K)"))
    for g, name in enumerate(gates):
        fig.add_trace(go.Box(x=[name], **box_statistics(entropy[:, g]), name=name, boxmean=True, boxpoints=False,
                             marker_color=_gate_colour(g), showlegend=False), 1, 1)
    fig.add_trace(go.Bar(x=gates, y=table["mi"], name="I(class; action)", marker_color="#4C78A8", showlegend=False,
                         customdata=table["mi_share"],
                         hovertemplate="%{x}: %{y:.3f} bits (%{customdata:.0%} of H(class))<extra></extra>"), 1, 2)
    fig.add_trace(go.Bar(x=gates, y=table["utilisation"], name="utilisation", marker_color="#F58518",
                         showlegend=False, customdata=table["actions_used"],
                         hovertemplate=f"%{{x}}: %{{y:.2f}} of at most {k} (%{{customdata}} of {k} actions used)"
                                       "<extra></extra>"), 1, 3)
    fig.add_hline(y=float(table["entropy_max"].iloc[0]), annotation_text=f"log2 K = {np.log2(k):.2f}", row=1, col=1,
                  **REFERENCE)
    fig.add_hline(y=class_entropy, annotation_text=f"H(class) = {class_entropy:.2f}", row=1, col=2, **REFERENCE)
    fig.add_hline(y=1.0, annotation_text="even use", row=1, col=3, **REFERENCE)
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(margin=MARGIN, height=340)
    return fig


def transition_heatmap(counts: np.ndarray, layer: int, *, shares: bool) -> go.Figure:
    """Heatmap of (K, K) transition counts from gate ``layer`` (rows) to ``layer + 1`` (columns),
    restricted to the actions used on each side; ``shares`` divides every row by its total."""
    rows, cols = np.flatnonzero(counts.sum(axis=1)), np.flatnonzero(counts.sum(axis=0))
    z = counts[np.ix_(rows, cols)].astype(float)  # (used at l, used at l + 1)
    if shares:
        z = z / z.sum(axis=1, keepdims=True)
    value = "%{z:.1%} of its inputs" if shares else "%{z:.0f} inputs"
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(a) for a in cols], y=[str(a) for a in rows], colorscale="Blues",
        colorbar=dict(title="row share" if shares else "inputs"),
        hovertemplate=f"action %{{y}} at gate {layer} -> action %{{x}} at gate {layer + 1}: {value}<extra></extra>",
    ))
    fig.update_xaxes(type="category", title_text=f"action at gate {layer + 1}")
    fig.update_yaxes(type="category", title_text=f"action at gate {layer}", autorange="reversed")
    fig.update_layout(margin=MARGIN, height=max(260, 120 + 18 * len(rows)))
    return fig


def health_evolution(history: pd.DataFrame) -> go.Figure:
    """Mean decision entropy, I(class; action) and utilisation per epoch, one line per gate
    (``history`` from :func:`analysis.path_health.health_over_epochs`)."""
    panels = [("entropy", "mean decision entropy (bits)"), ("mi", "I(class; action) (bits)"),
              ("utilisation", "utilisation (max share × K)")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[title for _, title in panels])
    for gate, rows in history.groupby("gate"):
        for col, (column, _) in enumerate(panels, start=1):
            fig.add_trace(go.Scatter(x=rows["epoch"], y=rows[column], mode="lines+markers", name=f"gate {gate}",
                                     legendgroup=f"gate {gate}", showlegend=col == 1,
                                     line_color=_gate_colour(int(gate))), 1, col)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(margin=MARGIN, height=320)
    return fig
