"""Figures of two runs side by side (analysis.compare): pure functions of its results."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from analysis.compare import MaskMatch, PathAgreement

MARGIN = dict(l=10, r=10, t=40, b=10)
RUN_COLOURS = ("#4C78A8", "#F58518")  # run A, run B
CHANCE_COLOUR = "#BAB0AC"
LEGEND = dict(orientation="h", y=1.02, yanchor="bottom", x=0)


def macs_distributions(macs: tuple[np.ndarray, np.ndarray], ungated_macs: tuple[int, int],
                       names: tuple[str, str]) -> go.Figure:
    """Per-input counted MACs of both runs on one axis (a violin each, box and mean inside): as a
    share of the ungated network when both have the same one, else in millions of MACs (shares of
    two different networks would not be comparable)."""
    relative = ungated_macs[0] == ungated_macs[1]
    fig = go.Figure()
    for values, ungated, name, colour in zip(macs, ungated_macs, names, RUN_COLOURS):
        x = values / ungated if relative else values / 1e6
        fig.add_trace(go.Violin(
            x=x.astype(np.float32), y=[name] * len(x), name=name, orientation="h", line_color=colour,
            box_visible=True, meanline_visible=True, points=False, spanmode="hard", showlegend=False,
            hoveron="violins+kde", hovertemplate=f"{name}: %{{x:{'.1%' if relative else '.2f'}}}<extra></extra>"))
        mean = float(x.mean())  # labelled: a network without gates is one thin line at its constant cost
        fig.add_trace(go.Scatter(x=[mean], y=[name], mode="markers+text", marker=dict(symbol="diamond", size=10,
                                 color=colour, line=dict(color="white", width=1)), showlegend=False,
                                 text=[f"mean {mean:.1%}" if relative else f"mean {mean:.2f} M"],
                                 textposition="top center", hoverinfo="skip"))
    if relative:
        fig.update_xaxes(title_text="counted MACs per input / ungated MACs (counted, not measured)",
                         tickformat=".0%", rangemode="tozero")
    else:
        fig.update_xaxes(title_text="counted MACs per input (millions; counted, not measured)", rangemode="tozero")
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=list(names)[::-1])  # A on top
    fig.update_layout(margin=MARGIN, height=300)
    return fig


def utilisation_bars(utilisation: tuple[np.ndarray, np.ndarray], num_actions: tuple[int, int],
                     names: tuple[str, str]) -> go.Figure:
    """Utilisation (max action share * K) per gate of each dynamic run, side by side, against the
    even-use floor of 1 (K, the collapse value, is in the hover); an ungated run has no bars."""
    fig = go.Figure()
    for values, k, name, colour in zip(utilisation, num_actions, names, RUN_COLOURS):
        if len(values):
            fig.add_trace(go.Bar(x=[f"gate {g}" for g in range(len(values))], y=values, name=name,
                                 marker_color=colour, showlegend=True,
                                 hovertemplate=f"{name}, %{{x}}: %{{y:.2f}} (1 even use, {k} collapse)<extra></extra>"))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#6F6F6F", annotation_text="1: even use",
                  annotation_position="right", annotation_font_color="#6F6F6F")  # right of the plot, clear of bars
    fig.update_yaxes(title_text="utilisation (max share × K)", rangemode="tozero")
    fig.update_layout(barmode="group", margin={**MARGIN, "r": 90}, height=320, legend=LEGEND)
    return fig


def agreement_bars(agreement: PathAgreement) -> go.Figure:
    """Per gate and for the whole path: the share of inputs whose matched actions agree in the two
    runs, next to the share two independent choosers with the same frequencies would agree on."""
    labels = [f"gate {g}" for g in range(len(agreement.per_gate))] + ["whole path"]
    observed = [*agreement.per_gate, agreement.whole_path]
    chance = [*agreement.chance_per_gate, agreement.chance_whole_path]
    fig = go.Figure([
        go.Bar(x=labels, y=observed, name="agreement (matched actions)", marker_color="#54A24B",
               text=[_percent(v) for v in observed], textposition="outside",
               hovertemplate="%{x}: %{y:.1%} of inputs take matched actions in both runs<extra></extra>"),
        go.Bar(x=labels, y=chance, name="chance (independent choices)", marker_color=CHANCE_COLOUR,
               text=[_percent(v) for v in chance], textposition="outside",
               hovertemplate="%{x}: %{y:.1%} expected from the action frequencies alone<extra></extra>"),
    ])
    fig.update_yaxes(title_text="share of inputs", tickformat=".0%", range=[0, 1.12])
    fig.update_layout(barmode="group", margin=MARGIN, height=340, legend=LEGEND)
    return fig


def _percent(share: float) -> str:
    """A bar label: whole percent, one decimal below 10% (a whole-path chance level is often under 1%)."""
    return f"{share:.0%}" if share >= 0.1 else f"{share:.1%}"


def matched_similarity(matches: list[MaskMatch]) -> go.Figure:
    """Per gate, the similarity of each matched pair of masks (one point per pair, box over them)
    against the mean similarity of all pairs, which a random matching would get on average."""
    fig = go.Figure()
    for g, m in enumerate(matches):
        values = m.similarity[~np.isnan(m.similarity)]
        fig.add_trace(go.Box(x=[f"gate {g}"] * len(values), y=values, name="matched pairs", legendgroup="matched",
                             showlegend=g == 0, marker_color="#54A24B", boxpoints="all", jitter=0.4, pointpos=0,
                             customdata=np.flatnonzero(~np.isnan(m.similarity)),
                             hovertemplate="%{x}, action %{customdata} of A: similarity %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[f"gate {g}" for g in range(len(matches))], y=[m.chance_similarity for m in matches],
                             mode="markers", name="all pairs (random matching)",
                             marker=dict(symbol="line-ew-open", size=40, line_width=3, color="#E45756"),
                             hovertemplate="%{x}: mean similarity of all pairs %{y:.3f}<extra></extra>"))
    lowest = min([m.chance_similarity for m in matches] + [float(np.nanmin(m.similarity)) for m in matches])
    fig.update_yaxes(title_text="cosine similarity of masks", range=[max(0.0, lowest - 0.05), 1.02])
    fig.update_layout(margin=MARGIN, height=340, legend=LEGEND)
    return fig


def similarity_heatmap(match: MaskMatch, shares: tuple[np.ndarray, np.ndarray], gate: int,
                       names: tuple[str, str]) -> go.Figure:
    """The (K_a, K_b) similarity of every pair of masks of one gate, rows in order of run A's action
    use (most used on top), columns reordered so that matched pairs lie on the diagonal (unmatched
    rows and columns last); ``shares`` are the (K,) action shares of each run, shown in the hover."""
    by_use = np.argsort(-shares[0], kind="stable")
    rows = np.concatenate([by_use[match.to_b[by_use] >= 0], by_use[match.to_b[by_use] < 0]])
    matched = match.to_b[rows][match.to_b[rows] >= 0]
    cols = np.concatenate([matched, np.setdiff1d(np.arange(match.matrix.shape[1]), matched)]).astype(int)
    z = match.matrix[np.ix_(rows, cols)]
    x = [f"B{b}" for b in cols]
    y = [f"A{a} ({shares[0][a]:.0%})" for a in rows]  # A's action and its share of the inputs
    custom = np.stack(np.broadcast_arrays(shares[0][rows][:, None], shares[1][cols][None, :]), axis=-1)
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=y, colorscale="Viridis", customdata=custom, colorbar=dict(title="cosine<br>similarity"),
        hovertemplate=(f"{names[0]} action %{{y}} vs {names[1]} action %{{x}} (%{{customdata[1]:.1%}} of inputs): "
                       "%{z:.3f}<extra></extra>")))  # colours span the matrix's own range: its values are close
    fig.add_trace(go.Scatter(x=x[:len(matched)], y=y[:len(matched)], mode="markers", name="matched pair",
                             showlegend=True,
                             marker=dict(symbol="square-open", size=9, color="#E45756", line_width=2),
                             hovertemplate="%{y} matched with %{x}<extra></extra>"))
    fig.update_xaxes(type="category", title_text=f"action of {names[1]} (matched pairs on the diagonal)")
    fig.update_yaxes(type="category", title_text=f"action of {names[0]} (share of inputs; most used on top)",
                     autorange="reversed", tickmode="array", tickvals=y, ticktext=y)
    fig.update_layout(title=f"gate {gate}", margin=MARGIN, height=max(320, 140 + 16 * len(rows)),
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1, xanchor="right"))
    return fig
