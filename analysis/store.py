"""A run's ``analysis/`` folder: tables (Parquet), arrays (.npy) and a manifest.

The manifest records, per entry, the parameters it was computed with and the SHA-256 of the
weights it was computed from. An entry whose weights hash or parameters differ is stale: it is
recomputed, never shown. Every file is written atomically.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models import Run
from models.checkpoint import package_version
from models.files import atomic_write_bytes, atomic_write_json

FOLDER = "analysis"
MANIFEST = "manifest.json"


class AnalysisStore:
    """Cached results of one run, keyed by name and parameters."""

    def __init__(self, run: Run):
        self.run = run
        self.path = run.path / FOLDER
        self.weights = run.meta.weights_sha256

    def _manifest(self) -> dict:
        file = self.path / MANIFEST
        if not file.is_file():
            return {"weights_sha256": self.weights, "entries": {}}
        try:
            manifest = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"weights_sha256": self.weights, "entries": {}}  # unreadable: recompute everything
        if manifest.get("weights_sha256") != self.weights:
            return {"weights_sha256": self.weights, "entries": {}}  # computed from other weights: stale
        return manifest

    def has(self, name: str, params: dict[str, Any]) -> bool:
        """Whether ``name`` is stored for these weights and exactly these parameters."""
        entry = self._manifest()["entries"].get(name)
        return entry is not None and entry["params"] == _plain(params) and all(
            (self.path / f).is_file() for f in entry["files"])

    def names(self) -> list[str]:
        """Entries stored for the current weights."""
        return sorted(self._manifest()["entries"])

    def params(self, name: str) -> dict | None:
        entry = self._manifest()["entries"].get(name)
        return entry["params"] if entry else None

    def save(self, name: str, params: dict[str, Any], *, tables: dict[str, pd.DataFrame] | None = None,
             arrays: dict[str, np.ndarray] | None = None, data: dict | None = None) -> None:
        """Write an entry's files, then record it in the manifest (the manifest is written last)."""
        files = []
        for key, df in (tables or {}).items():
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            files.append(self._write(f"{name}.{key}.parquet", buf.getvalue()))
        for key, arr in (arrays or {}).items():
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            files.append(self._write(f"{name}.{key}.npy", buf.getvalue()))
        if data is not None:
            files.append(self._write(f"{name}.json", (json.dumps(_plain(data), indent=1) + "\n").encode()))
        manifest = self._manifest()
        manifest["entries"][name] = {"params": _plain(params), "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                     "versions": {"gatescope": package_version(), "torch": torch.__version__}}
        atomic_write_json(self.path / MANIFEST, manifest)

    def table(self, name: str, key: str) -> pd.DataFrame:
        return pd.read_parquet(self.path / f"{name}.{key}.parquet")

    def array(self, name: str, key: str) -> np.ndarray:
        return np.load(self.path / f"{name}.{key}.npy", allow_pickle=False)

    def data(self, name: str) -> dict:
        return json.loads((self.path / f"{name}.json").read_text())

    def _write(self, filename: str, payload: bytes) -> str:
        atomic_write_bytes(self.path / filename, payload)
        return filename


def _plain(obj: Any) -> Any:
    """JSON-compatible copy (tuples -> lists, numpy scalars -> Python numbers)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
