"""Widgets the pages share."""

from __future__ import annotations

import plotly.graph_objects as go

from app.figures import figure_data


def chart(where, fig: go.Figure, *, key: str, **kwargs):
    """A plotly chart (PNG from its toolbar) with a button downloading its data as CSV;
    ``where`` is ``st`` or a container. Returns the chart's selection event."""
    event = where.plotly_chart(fig, key=key, **kwargs)
    where.download_button("Chart data (CSV)", figure_data(fig).to_csv(index=False), file_name=f"{key}.csv",
                          mime="text/csv", key=f"{key}-csv")
    return event
