"""Architectures by name: ``create_model("resnet20", gated=True, num_classes=10)``."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from .network import Network

_BUILDERS: dict[str, Callable[..., Network]] = {}


def register_model(name: str) -> Callable[[Callable[..., Network]], Callable[..., Network]]:
    """Decorator that registers an architecture builder under ``name``."""

    def wrap(builder: Callable[..., Network]) -> Callable[..., Network]:
        if name in _BUILDERS:
            raise ValueError(f"architecture {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a glob pattern, sorted."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs: Any) -> Network:
    """Build a registered architecture; the name and arguments are kept on the model.

    >>> net = create_model("small_cnn", gated=True, num_classes=10)
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    model = _BUILDERS[name](**kwargs)
    model.arch = name
    model.arch_args = dict(kwargs)
    return model
