"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

An interrupted write leaves the previous file (or none), never a half-written one; a writer
killed mid-write may leave its hidden ``.NAME.*.tmp`` file behind, which no reader opens.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, writes stay atomic but unserialised
    fcntl = None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run folders are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """``obj`` as standard JSON text. NaN and infinities have no JSON form (Python would write
    ``NaN``/``-Infinity``, which strict parsers reject): a ValueError names the first such entry."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        where = _non_finite(obj, "")
        if where is None:
            raise
        raise ValueError(f"not standard JSON: {where[0] or 'the value'} is {where[1]}") from None


def _non_finite(obj: Any, at: str) -> tuple[str, float] | None:
    """The path (``a.b[2]``) and value of the first NaN or infinity inside ``obj``, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return at, obj
    if isinstance(obj, dict):
        items = ((f"{at}.{k}" if at else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{at}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for key, value in items:
        found = _non_finite(value, key)
        if found is not None:
            return found
    return None


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented standard JSON, atomically; a NaN or infinity inside it is a
    ValueError naming the file and the entry, and nothing is written."""
    try:
        text = dumps_json(obj)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    atomic_write_bytes(path, (text + "\n").encode())


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created if missing) for the block.

    Serialises read-modify-write cycles of a shared file between processes and threads (each
    call opens its own descriptor). The lock goes with the descriptor, so a killed holder
    never leaves it held. Without ``fcntl`` (Windows) the block runs unlocked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when f is closed
        yield


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
