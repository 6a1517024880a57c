"""Plotly figures from analysis results: pure functions, no Streamlit, no model loading."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly import colors
from plotly.subplots import make_subplots


def layer_costs(layers) -> go.Figure:
    """Ungated MACs of every conv and linear layer (``models.CostModel.layers``), in millions; layers
    whose input or output channels a gate switches per input are coloured apart."""
    gated = ["gated" if layer.in_gate is not None or layer.out_gate is not None else "static" for layer in layers]
    fig = go.Figure()
    for kind, colour in (("gated", "#4C78A8"), ("static", "#BAB0AC")):
        rows = [(layer.name, layer.macs / 1e6) for layer, g in zip(layers, gated) if g == kind]
        if rows:
            names, macs = zip(*rows)
            fig.add_trace(go.Bar(x=list(names), y=list(macs), name=f"{kind} layers", marker_color=colour,
                                 hovertemplate="%{x}: %{y:.2f} M MACs<extra></extra>"))
    fig.update_layout(yaxis_title="MACs (M), ungated", xaxis=dict(categoryorder="array",
                      categoryarray=[layer.name for layer in layers]), legend=dict(orientation="h", y=1.15),
                      margin=dict(l=10, r=10, t=30, b=10), height=240)
    return fig


def macs_histogram(ratios: np.ndarray) -> go.Figure:
    """Distribution of per-input counted MACs as a fraction of the ungated network."""
    counts, edges = np.histogram(ratios, bins=40)  # binned here: the browser gets 40 bars, not every input
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=0.95 * np.diff(edges), marker_color="#4C78A8",
                           customdata=np.stack([edges[:-1], edges[1:]], axis=1),
                           hovertemplate="%{customdata[0]:.3f}-%{customdata[1]:.3f}: %{y} inputs<extra></extra>"))
    fig.add_vline(x=float(np.mean(ratios)), line_dash="dash", annotation_text=f"mean {np.mean(ratios):.3f}")
    fig.update_layout(
        xaxis_title="counted MACs / ungated MACs", yaxis_title="inputs", bargap=0.05,
        margin=dict(l=10, r=10, t=30, b=10), height=300,
    )
    return fig


def training_curves(log: pd.DataFrame) -> go.Figure:
    """Test accuracy and MACs ratio per epoch, one line per training phase."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("test accuracy", "counted MACs ratio"))
    for phase, rows in log.groupby("phase", sort=False):
        fig.add_trace(go.Scatter(x=rows["epoch"], y=rows["test_acc"], name=phase, mode="lines+markers"), 1, 1)
        fig.add_trace(go.Scatter(x=rows["epoch"], y=rows["test_macs_ratio"], name=phase, mode="lines+markers",
                                 showlegend=False), 1, 2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(margin=dict(l=10, r=10, t=30, b=10), height=300)
    return fig


def action_usage(paths: np.ndarray, num_actions: int) -> go.Figure:
    """Heatmap: how often each gated layer (rows) chose each action (columns)."""
    counts = np.stack([np.bincount(paths[:, l], minlength=num_actions) for l in range(paths.shape[1])])
    share = counts / max(1, len(paths))
    fig = go.Figure(go.Heatmap(
        z=share, x=list(range(num_actions)), y=[f"gate {l}" for l in range(paths.shape[1])],
        colorscale="Blues", colorbar=dict(title="share"),
        hovertemplate="%{y}, action %{x}: %{z:.1%} of inputs<extra></extra>",
    ))
    fig.update_layout(xaxis_title="action (mask index)", margin=dict(l=10, r=10, t=30, b=10),
                      height=80 + 40 * paths.shape[1])
    return fig


def class_action_preference(paths: np.ndarray, labels: np.ndarray, layer: int, class_names: list[str],
                            num_actions: int) -> go.Figure:
    """Heatmap for one gated layer: share of each class's inputs choosing each action."""
    z = np.zeros((len(class_names), num_actions))
    for c in range(len(class_names)):
        chosen = paths[labels == c, layer]
        if len(chosen):
            z[c] = np.bincount(chosen, minlength=num_actions) / len(chosen)
    fig = go.Figure(go.Heatmap(z=z, x=list(range(num_actions)), y=class_names, colorscale="Viridis",
                               hovertemplate="class %{y}, action %{x}: %{z:.1%}<extra></extra>"))
    # a categorical axis with one tick per class: numeric-looking names ("0".."9") would otherwise
    # read as a linear axis that plotly labels only every other value
    fig.update_yaxes(type="category", tickmode="array", tickvals=list(class_names), ticktext=list(class_names))
    fig.update_layout(xaxis_title="action", yaxis_title="class", margin=dict(l=10, r=10, t=30, b=10),
                      height=max(360, 80 + 20 * len(class_names)))
    return fig


def width_bars(before: list[float], after: list[float], labels: list[str], *, unit: str = "channels") -> go.Figure:
    """Per-layer widths (or mean active channels) before and after pruning."""
    fig = go.Figure([
        go.Bar(x=labels, y=before, name="before", marker_color="#BAB0AC"),
        go.Bar(x=labels, y=after, name="after", marker_color="#4C78A8"),
    ])
    fig.update_layout(barmode="overlay", yaxis_title=unit, margin=dict(l=10, r=10, t=30, b=10), height=320,
                      legend=dict(orientation="h", y=1.1))
    return fig


def accuracy_vs_macs(curve: pd.DataFrame, current: tuple[float, float] | None, *, label: str) -> go.Figure:
    """Accuracy against counted MACs ratio along a pruning sweep, with the current point."""
    fig = go.Figure(go.Scatter(x=curve["macs_ratio"], y=curve["accuracy"], mode="lines+markers", name="sweep",
                               hovertemplate="MACs %{x:.1%}: accuracy %{y:.2%}<extra></extra>"))
    if current is not None:
        fig.add_trace(go.Scatter(x=[current[0]], y=[current[1]], mode="markers", name="current",
                                 marker=dict(size=14, color="#E45756", symbol="star")))
    fig.update_layout(xaxis_title="counted MACs / ungated MACs", yaxis_title=label, xaxis_tickformat=".0%",
                      yaxis_tickformat=".0%", margin=dict(l=10, r=10, t=30, b=10), height=320)
    return fig


def macs_clean_vs_attacked(clean: np.ndarray, attacked: dict[str, np.ndarray]) -> go.Figure:
    """Distributions of per-input counted MACs ratios, clean against each attack."""
    fig = go.Figure(go.Histogram(x=clean, name="clean", opacity=0.6, nbinsx=40))
    for name, ratios in attacked.items():
        fig.add_trace(go.Histogram(x=ratios, name=name, opacity=0.6, nbinsx=40))
    fig.update_layout(barmode="overlay", xaxis_title="counted MACs / ungated MACs", yaxis_title="inputs",
                      margin=dict(l=10, r=10, t=30, b=10), height=320)
    return fig


SYMBOLS = ("circle", "x", "diamond", "triangle-up", "square", "star", "cross", "triangle-down")


MAX_MAP_POINTS = 20_000  # above this a WebGL map gets sluggish in a browser and the page heavy


def thin_points(points: pd.DataFrame, limit: int = MAX_MAP_POINTS, *, seed: int = 0) -> tuple[pd.DataFrame, str | None]:
    """At most ``limit`` rows of a map, and a sentence saying what was left out (None: nothing).

    Kinds take equal shares of the budget, smallest first, a kind smaller than its share lending
    the rest to the others: rare attacks are kept whole, larger kinds are uniform random samples."""
    if len(points) <= limit:
        return points, None
    counts = points["kind"].value_counts()
    quota: dict[str, int] = {}
    budget, kinds = limit, list(counts.sort_values().index)
    for i, kind in enumerate(kinds):  # smallest first: each takes its fair share of what is left
        share = budget // (len(kinds) - i)
        quota[kind] = int(min(counts[kind], share if i < len(kinds) - 1 else budget))
        budget -= quota[kind]
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.choice(np.flatnonzero(points["kind"].to_numpy() == k), quota[k], replace=False)
                           for k in kinds])
    thinned = points.iloc[np.sort(keep)].reset_index(drop=True)
    cut = ", ".join(f"{k} {quota[k]:,} of {counts[k]:,}" for k in kinds if quota[k] < counts[k])
    return thinned, (f"Showing {len(thinned):,} of {len(points):,} points, a random sample ({cut}) so the "
                     f"browser stays responsive; selections refer to the points shown.")


def class_colours(count: int) -> list[str]:
    """A categorical colour per class (no order implied between classes)."""
    palette = colors.qualitative.Plotly if count <= 10 else colors.qualitative.Alphabet
    return [palette[c % len(palette)] for c in range(count)]


def decision_map(points: pd.DataFrame, class_names: list[str]) -> go.Figure:
    """UMAP of decision features as one WebGL trace (so selection indices are row numbers):
    colour = true class (categorical, with a legend), marker = clean or the attack that produced
    the point. The legend entries are traces of one point without a position (plotly.js leaves
    traces without points out of the legend): no selection can pick them."""
    kinds = list(dict.fromkeys(points["kind"]))
    symbols = {k: SYMBOLS[i % len(SYMBOLS)] for i, k in enumerate(kinds)}
    colours = class_colours(len(class_names))
    fig = go.Figure(go.Scattergl(
        x=points["x"].to_numpy(np.float32), y=points["y"].to_numpy(np.float32), mode="markers", showlegend=False,
        marker=dict(color=[colours[c] for c in points["label"]], size=6, symbol=points["kind"].map(symbols),
                    opacity=0.8),
        customdata=np.stack([points["source"], points["label"], points["pred"]], axis=1),
        text=points["kind"], hovertemplate="%{text} #%{customdata[0]}<br>label %{customdata[1]}, "
                                           "predicted %{customdata[2]}<extra></extra>",
    ))
    for c, name in enumerate(class_names):
        fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers", name=name, legendgroup="class",
                                   legendgrouptitle_text="class", marker=dict(color=colours[c], size=8)))
    for kind, symbol in symbols.items():
        fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers", name=kind, legendgroup="kind",
                                   legendgrouptitle_text="marker", marker=dict(color="#555555", size=8, symbol=symbol)))
    fig.update_layout(dragmode="lasso", margin=dict(l=10, r=10, t=30, b=10), height=560,
                      xaxis=dict(showticklabels=False, title="UMAP 1"), yaxis=dict(showticklabels=False, title="UMAP 2"))
    return fig


def path_heatmap(probs: np.ndarray, actions: np.ndarray, *, changed: list[int] | None = None,
                 title: str = "") -> go.Figure:
    """Action probabilities per gated layer (rows) and action (columns), chosen ones marked;
    layers in ``changed`` are flagged (their decision differs from the compared path)."""
    labels = [f"gate {l}" + (" ≠" if changed and l in changed else "") for l in range(len(actions))]
    fig = go.Figure(go.Heatmap(z=probs, y=labels, colorscale="Blues", zmin=0, zmax=1,
                               colorbar=dict(title="p"), hovertemplate="%{y}, action %{x}: p = %{z:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=actions, y=labels, mode="markers", marker=dict(symbol="x", size=10, color="#E45756"),
                             name="chosen", hovertemplate="%{y}: chose action %{x}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="action", margin=dict(l=10, r=10, t=40, b=10),
                      height=120 + 40 * len(actions), showlegend=False)
    return fig


def class_probabilities(probs: dict[str, np.ndarray], class_names: list[str]) -> go.Figure:
    """Class probabilities of one input under several conditions (e.g. as decided and forced), side by side."""
    fig = go.Figure([go.Bar(x=class_names, y=p, name=name) for name, p in probs.items()])
    fig.update_layout(barmode="group", yaxis=dict(title="probability", range=[0, 1]), xaxis=dict(type="category"),
                      margin=dict(l=10, r=10, t=30, b=10), height=280, legend=dict(orientation="h", y=1.12))
    return fig


def channel_strips(masks: list[np.ndarray]) -> go.Figure:
    """The chosen mask of each gated layer as a strip of channels (grey: switched off)."""
    width = max(len(m) for m in masks)
    z = np.full((len(masks), width), np.nan)
    for l, m in enumerate(masks):
        z[l, :len(m)] = np.where(m == 0, np.nan, m)
    fig = go.Figure(go.Heatmap(z=z, y=[f"gate {l}" for l in range(len(masks))], colorscale="Viridis",
                               colorbar=dict(title="mask"), hoverongaps=False,
                               hovertemplate="%{y}, channel %{x}: %{z:.2f}<extra></extra>"))
    fig.update_layout(xaxis_title="channel (blank: off for this input)", plot_bgcolor="#EEEEEE",
                      margin=dict(l=10, r=10, t=30, b=10), height=100 + 40 * len(masks))
    return fig


def sankey(labels: list[str], source: list[int], target: list[int], value: list[int], *, title: str) -> go.Figure:
    """Flows of inputs from each gated layer's action to the next layer's."""
    fig = go.Figure(go.Sankey(node=dict(label=labels, pad=8, thickness=12),
                              link=dict(source=source, target=target, value=value)))
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=40, b=10), height=420)
    return fig


def attribution_image(attr: np.ndarray, *, scale: int = 8) -> np.ndarray:
    """A signed attribution map (C, H, W), summed over channels, as an RGB image (H*scale, W*scale, 3)
    in [0, 1]: red raises the chosen action's probability, blue lowers it, white is neutral.
    Each input pixel becomes a scale x scale block, so small inputs stay legible."""
    a = attr.sum(axis=0)
    bound = float(np.abs(a).max()) or 1.0
    t = np.clip(a / bound, -1.0, 1.0)[..., None]  # (H, W, 1) in [-1, 1]
    red, blue, white = np.array([0.70, 0.09, 0.17]), np.array([0.13, 0.40, 0.67]), np.ones(3)
    rgb = np.where(t >= 0, white + t * (red - white), white - t * (blue - white))
    return np.kron(rgb, np.ones((scale, scale, 1)))


def figure_data(fig: go.Figure) -> pd.DataFrame:
    """The data behind any figure here, as one long table (one row per point, cell or link)."""
    frames = []
    for i, t in enumerate(fig.data):
        name = t.name or t.type
        if t.type == "sankey":
            labels = list(t.node.label)
            frames.append(pd.DataFrame({"source": [labels[s] for s in t.link.source],
                                        "target": [labels[s] for s in t.link.target], "value": list(t.link.value)}))
        elif getattr(t, "z", None) is not None:
            z = np.asarray(t.z, dtype=float)
            xs = list(t.x) if t.x is not None else list(range(z.shape[1]))
            ys = list(t.y) if t.y is not None else list(range(z.shape[0]))
            frames.append(pd.DataFrame({"y": np.repeat(ys, z.shape[1]), "x": np.tile(xs, z.shape[0]),
                                        "value": z.ravel()}))
        elif t.type == "box" and t.q1 is not None:  # precomputed (app.health_figures.box_statistics)
            stats = ("lowerfence", "q1", "median", "q3", "upperfence", "mean")
            frames.append(pd.DataFrame({"x": list(t.x), **{k: list(getattr(t, k)) for k in stats}}))
        else:
            frame = pd.DataFrame({"x": np.asarray(t.x)} if t.x is not None else {})
            if getattr(t, "y", None) is not None:
                frame["y"] = np.asarray(t.y)
            frames.append(frame)
        frames[-1].insert(0, "trace", name)
    return pd.concat(frames, ignore_index=True)
