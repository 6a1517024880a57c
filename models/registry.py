"""Things by name: a small generic :class:`Registry`, and the architectures
(``create_model("resnet20", gated=True, num_classes=10)``)."""

from __future__ import annotations

import fnmatch
import inspect
from typing import Any, Callable, Generic, TypeVar

from .network import Network

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one family (architectures, datasets, attacks, detectors), so that the
    CLI and the app list what exists instead of hard-coding it."""

    def __init__(self, kind: str, error: type[Exception] = KeyError):
        self.kind, self.error = kind, error
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its argument under ``name``."""

        def wrap(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return wrap

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]


_BUILDERS: Registry[Callable[..., Network]] = Registry("architecture")


def register_model(name: str) -> Callable[[Callable[..., Network]], Callable[..., Network]]:
    """Decorator that registers an architecture builder under ``name``."""
    return _BUILDERS.register(name)


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a glob pattern, sorted."""
    return _BUILDERS.names(pattern)


def builder_defaults(name: str) -> dict[str, Any]:
    """The keyword arguments of a registered architecture's builder, with their defaults."""
    params = inspect.signature(_BUILDERS.get(name)).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def create_model(name: str, **kwargs: Any) -> Network:
    """Build a registered architecture; the name and arguments are kept on the model.

    >>> net = create_model("small_cnn", gated=True, num_classes=10)
    """
    model = _BUILDERS.get(name)(**kwargs)
    model.arch = name
    model.arch_args = dict(kwargs)
    return model
