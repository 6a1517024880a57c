"""Where the app may read and write: the folders given on the command line, nothing else.

A path typed into a page is untrusted. It is resolved (``..``, ``~`` and symbolic links
followed) and accepted only when the result lies inside one of the roots, so no text box
reaches ``/etc`` or another user's home through ``../`` or a link.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOTS_ENV = "GATESCOPE_ROOTS"  # os.pathsep-separated folders given with --root
RUNS_ENV = "GATESCOPE_RUNS"  # os.pathsep-separated run folders given on the command line


class PathError(ValueError):
    """A path outside the allowed roots, or not a path at all; the message says which."""


def _env_paths(name: str) -> list[Path]:
    return [Path(p) for p in os.environ.get(name, "").split(os.pathsep) if p]


def command_line_runs() -> list[Path]:
    """The run folders passed on the command line."""
    return _env_paths(RUNS_ENV)


def roots() -> list[Path]:
    """The folders passed with ``--root``, resolved."""
    return [p.resolve() for p in _env_paths(ROOTS_ENV)]


def write_roots(uploads: Path) -> list[Path]:
    """Where pages may write: the roots, the folders holding the command line's runs, and
    ``uploads`` (the app's own cache of uploaded runs)."""
    return roots() + [p.resolve().parent for p in command_line_runs()] + [uploads.resolve()]


def resolve_within(text: str | os.PathLike, allowed: list[Path]) -> Path:
    """``text`` resolved to an absolute path, if it lies inside one of ``allowed``."""
    text = os.fspath(text)
    if not text.strip():
        raise PathError("empty path")
    if "\0" in text or len(text) > 4096:
        raise PathError("not a usable path (NUL character or over 4,096 characters)")
    if not allowed:
        raise PathError("no folder is open to the app; start it with `gatescope app --root FOLDER` "
                        "to open paths under FOLDER")
    try:
        path = Path(text).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symbolic-link loop
        raise PathError(f"{text[:200]!r} cannot be resolved ({e})") from None
    if not any(path == root or path.is_relative_to(root) for root in allowed):
        raise PathError(f"{text[:200]!r} resolves to {str(path)[:200]}, outside the folders this app may use "
                        f"({', '.join(map(str, allowed))})")
    return path
