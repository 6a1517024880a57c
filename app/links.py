"""The page state in the URL (``st.query_params``), so that a link reopens the same view.

Before a widget is drawn, :func:`follow_url` lets a URL value the session has not seen yet (a
link just opened, or the browser's back button) set the widget; after the widgets,
:func:`to_url` writes their values back. Parameters are the widgets' keys, values their text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

_SEEN = "_url_seen"  # key -> the URL text last applied or written, per session


def follow_url(key: str, convert: Callable[[str], Any]) -> str | None:
    """Set widget ``key`` from the URL's ``key`` parameter when that value is new to this session.
    ``convert`` turns the text into the widget's value and raises ValueError when it is not one;
    returns a message for the user then (the widget keeps its value), else None."""
    raw = st.query_params.get(key)
    seen = st.session_state.setdefault(_SEEN, {})
    if raw is None or seen.get(key) == raw:
        return None
    seen[key] = raw
    try:
        st.session_state[key] = convert(raw)
    except (ValueError, TypeError) as e:
        return f"The link's `{key}={raw}` is not used: {e}"
    return None


def to_url(**values: Any) -> None:
    """Write ``values`` (widget key -> its current value) into the URL; a None value drops its key."""
    seen = st.session_state.setdefault(_SEEN, {})
    for key, value in values.items():
        if value is not None:
            seen[key] = st.query_params[key] = str(value)
        elif key in st.query_params:
            del st.query_params[key]


def one_of(options: list) -> Callable[[str], Any]:
    """A converter accepting the text of one of ``options`` (returned as that option)."""
    def convert(raw: str):
        for option in options:
            if str(option) == raw:
                return option
        raise ValueError(f"expected one of {', '.join(map(str, options))}")
    return convert


def in_range(low: float, high: float, kind: type = int) -> Callable[[str], Any]:
    """A converter accepting a number of type ``kind`` within [low, high]."""
    def convert(raw: str):
        value = kind(raw)
        if not low <= value <= high:
            raise ValueError(f"expected {low} to {high}")
        return value
    return convert
