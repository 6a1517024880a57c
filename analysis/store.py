"""A run's ``analysis/`` folder: tables (Parquet), arrays (.npy) and a manifest.

The manifest records, per entry, the parameters it was computed with and the SHA-256 of the
weights it was computed from. An entry whose weights hash or parameters differ is stale: it is
recomputed, never shown. Every file is written atomically.

Several processes (CLI runs, app sessions) may share one folder: file names carry a digest of
weights and parameters (``umap.<digest12>.points.parquet``), so two computations never
overwrite each other's files and a reader holding parameters reads exactly their results; the
manifest's read-modify-write runs under a lock, so no saved entry is lost. Files an entry no
longer lists are deleted by a later save once they have been unlisted for ``GRACE_S``.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch

from models import Run
from models.checkpoint import package_version
from models.files import atomic_write_bytes, atomic_write_json, dumps_json, locked, sha256_bytes

FOLDER = "analysis"
MANIFEST = "manifest.json"
LOCK = ".manifest.lock"
GRACE_S = 3600  # a session that read the manifest this long ago may still open the files it listed
_OWN = (".parquet", ".npy", ".npz", ".json", ".tmp")  # what the store writes; anything else is left alone
# Arrays larger than this are written zlib-compressed (.npz, one array named "array"): the attacked
# images of a 1,000-image MNIST analysis shrink from 3.1 MB to 0.4-1.6 MB each, exactly.
COMPRESS_BYTES = 1 << 20


class AnalysisStore:
    """Cached results of one run, keyed by name and parameters."""

    def __init__(self, run: Run):
        self.run = run
        self.path = run.path / FOLDER
        self.weights = run.meta.weights_sha256

    def _stored(self) -> dict | None:
        """The manifest as stored, or None when absent or not a manifest (then recompute all)."""
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return None
        ok = isinstance(manifest, dict) and isinstance(manifest.get("entries"), dict) and all(
            isinstance(e, dict) and isinstance(e.get("files"), list) and "params" in e for e in manifest["entries"].values())
        return manifest if ok else None

    def _manifest(self) -> dict:
        manifest = self._stored()
        if manifest is None or manifest.get("weights_sha256") != self.weights:
            return {"weights_sha256": self.weights, "entries": {}}  # none, unreadable or from other weights
        return manifest

    def stale(self) -> bool:
        """Whether the folder holds results computed from other weights (never shown)."""
        manifest = self._stored()
        return manifest is not None and manifest.get("weights_sha256") != self.weights and bool(manifest["entries"])

    def has(self, name: str, params: dict[str, Any]) -> bool:
        """Whether ``name`` is stored for these weights and exactly these parameters."""
        entry = self._manifest()["entries"].get(name)
        return entry is not None and entry["params"] == _plain(params) and all(
            (self.path / f).is_file() for f in entry["files"])

    def names(self) -> list[str]:
        """Entries stored for the current weights."""
        return sorted(self._manifest()["entries"])

    def entries(self) -> dict[str, dict]:
        """The manifest's entries for these weights (name -> params, files, created, versions)."""
        return self._manifest()["entries"]

    def roll_back(self, before: dict[str, dict]) -> None:
        """Put the manifest's entries back to ``before`` (an earlier :meth:`entries`): an entry
        added since is removed and its files deleted now; one saved again since gets its earlier
        version back while its files are still there (they are kept ``GRACE_S``), else goes."""
        with locked(self.path / LOCK):
            manifest = self._manifest()
            dropped = set()
            for name, entry in list(manifest["entries"].items()):
                old = before.get(name)
                if entry == old:
                    continue
                dropped.update(entry["files"])
                if old is not None and all((self.path / f).is_file() for f in old["files"]):
                    manifest["entries"][name] = old
                else:
                    del manifest["entries"][name]
            atomic_write_json(self.path / MANIFEST, manifest)
            for filename in dropped - {f for e in manifest["entries"].values() for f in e["files"]}:
                (self.path / filename).unlink(missing_ok=True)

    def params(self, name: str) -> dict | None:
        entry = self._manifest()["entries"].get(name)
        return entry["params"] if entry else None

    def save(self, name: str, params: dict[str, Any], *, tables: dict[str, pd.DataFrame] | None = None,
             arrays: dict[str, np.ndarray] | None = None, data: dict | None = None, compress: bool = True,
             took: dict[str, float] | None = None) -> None:
        """Write an entry's files, then record it in the manifest (the manifest is written last).
        ``compress=False`` keeps large arrays as plain .npy too (faster to read, for what is read often);
        ``took`` (e.g. :meth:`Stopwatch.took`) is kept with the entry: what computing it cost."""
        prefix = f"{name}.{self._digest(params)}"
        files = []
        for key, df in (tables or {}).items():
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            files.append(self._write(f"{prefix}.{key}.parquet", buf.getvalue()))
        for key, arr in (arrays or {}).items():
            buf = io.BytesIO()
            if compress and arr.nbytes > COMPRESS_BYTES:
                np.savez_compressed(buf, array=arr)
                files.append(self._write(f"{prefix}.{key}.npz", buf.getvalue()))
            else:
                np.save(buf, arr, allow_pickle=False)
                files.append(self._write(f"{prefix}.{key}.npy", buf.getvalue()))
        if data is not None:
            files.append(self._write(f"{prefix}.json", (dumps_json(_plain(data), indent=1) + "\n").encode()))
        self._record(name, params, files, took)

    def save_streamed(self, name: str, params: dict[str, Any],
                      chunks: Iterable[tuple[pd.DataFrame, dict[str, np.ndarray]]], rows: int,
                      took: Callable[[], dict[str, float]] | None = None) -> None:
        """:meth:`save` for results too large to hold at once: each chunk's table is appended to
        one Parquet file (table ``"rows"``, a row group per chunk) and its arrays to ``.npy`` files
        of ``rows`` rows written through a memory map. Everything goes to temporary names that
        are renamed only once complete, then the manifest records the entry (and ``took()``, called
        once the chunks are exhausted)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path.mkdir(parents=True, exist_ok=True)
        prefix = f"{name}.{self._digest(params)}"
        temps: dict[Path, str] = {}  # temporary file -> final name
        writer, arrays, at = None, {}, 0
        try:
            for table, chunk_arrays in chunks:
                t = pa.Table.from_pandas(table, preserve_index=False)
                if writer is None:
                    tmp = self.path / f".{prefix}.rows.parquet.{os.getpid()}.tmp"
                    writer, temps[tmp] = pq.ParquetWriter(tmp, t.schema), f"{prefix}.rows.parquet"
                writer.write_table(t)
                for key, a in chunk_arrays.items():
                    if key not in arrays:
                        tmp = self.path / f".{prefix}.{key}.npy.{os.getpid()}.tmp"
                        arrays[key] = np.lib.format.open_memmap(tmp, mode="w+", dtype=a.dtype, shape=(rows, *a.shape[1:]))
                        temps[tmp] = f"{prefix}.{key}.npy"
                    arrays[key][at:at + len(a)] = a
                at += len(table)
            if at != rows:
                raise ValueError(f"{name}: the chunks held {at} rows, {rows} were announced")
            if writer is not None:
                writer.close()
            for a in arrays.values():
                a.flush()
            arrays.clear()  # closes the memory maps
            for tmp, final in temps.items():
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.path / final)
        except BaseException:
            for tmp in temps:
                tmp.unlink(missing_ok=True)
            raise
        self._record(name, params, list(temps.values()), took() if took else None)

    def _record(self, name: str, params: dict[str, Any], files: list[str], took: dict[str, float] | None = None) -> None:
        """Add the entry to the manifest (after its files are complete)."""
        with locked(self.path / LOCK):  # another process's save between our read and write would be lost
            manifest = self._manifest()
            replaced = manifest["entries"].get(name, {"files": []})["files"]
            manifest["entries"][name] = {"params": _plain(params), "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                         "versions": {"gatescope": package_version(), "torch": torch.__version__}}
            if took:
                manifest["entries"][name]["took"] = {k: round(float(v), 3) for k, v in took.items()}
            atomic_write_json(self.path / MANIFEST, manifest)
            self._collect(manifest, unlisted=set(replaced) - set(files))

    def table(self, name: str, key: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Table ``key`` of entry ``name`` as the manifest lists it, or with ``params`` the one
        computed with exactly these parameters, whatever another session has stored since."""
        return pd.read_parquet(self._file(name, f"{key}.parquet", params))

    def array(self, name: str, key: str, params: dict[str, Any] | None = None) -> np.ndarray:
        """Array ``key`` of entry ``name``; ``params`` as for :meth:`table`."""
        file = self._file(name, f"{key}.npy", params)
        packed = file.with_suffix(".npz")
        if not file.is_file() and packed.is_file():
            with np.load(packed, allow_pickle=False) as archive:
                return archive["array"]
        return np.load(file, allow_pickle=False)

    def data(self, name: str, params: dict[str, Any] | None = None) -> dict:
        """JSON data of entry ``name``; ``params`` as for :meth:`table`."""
        return json.loads(self._file(name, "json", params).read_text())

    def _digest(self, params: dict[str, Any]) -> str:
        """12 hex digits naming the files of one computation (these weights, these parameters)."""
        key = json.dumps({"weights": self.weights, "params": _plain(params)}, sort_keys=True)
        return sha256_bytes(key.encode())[:12]

    def _file(self, name: str, suffix: str, params: dict[str, Any] | None) -> Path:
        """``NAME.DIGEST.SUFFIX`` for ``params`` (default: the stored entry's), or ``NAME.SUFFIX``
        where the manifest lists that un-digested name (entries saved before names had digests)."""
        entry = self._manifest()["entries"].get(name)
        if params is None and entry is None:
            raise FileNotFoundError(f"{self.path / MANIFEST}: no entry {name!r} for weights {self.weights[:12]}; "
                                    f"stored: {', '.join(self.names()) or 'none'}")
        params = _plain(entry["params"] if params is None else params)
        file = self.path / f"{name}.{self._digest(params)}.{suffix}"
        if not file.is_file() and entry is not None and entry["params"] == params and f"{name}.{suffix}" in entry["files"]:
            return self.path / f"{name}.{suffix}"
        return file

    def _collect(self, manifest: dict, unlisted: set[str]) -> None:
        """Delete the store's files that ``manifest`` does not list and that have been unlisted for
        ``GRACE_S``: older parameters' results, other weights' entries, a killed writer's temp
        files. ``unlisted`` (just dropped from the manifest) are touched first, so the grace
        counts from now: a session that read the old manifest a moment ago can still open them."""
        for filename in unlisted:
            try:
                os.utime(self.path / filename)
            except FileNotFoundError:
                pass
        listed = {MANIFEST, *(f for entry in manifest["entries"].values() for f in entry["files"])}
        cutoff = time.time() - GRACE_S
        for file in self.path.iterdir():
            if file.name in listed or not file.name.endswith(_OWN):
                continue
            try:
                if file.stat().st_mtime < cutoff:
                    file.unlink()
            except FileNotFoundError:
                pass  # collected by another process at the same moment

    def _write(self, filename: str, payload: bytes) -> str:
        atomic_write_bytes(self.path / filename, payload)
        return filename


def _plain(obj: Any) -> Any:
    """JSON-compatible copy (tuples -> lists, numpy scalars -> Python numbers)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


class Stopwatch:
    """Wall-clock and CPU time (every thread of this process) since it was made or last
    :meth:`restart`-ed. The CPU time is what an entry cost even when other work shared the
    machine (the wall time then says little); on an idle machine wall ~ CPU / threads busy."""

    def __init__(self):
        self.restart()

    def restart(self) -> "Stopwatch":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def took(self) -> dict[str, float]:
        return {"seconds": time.perf_counter() - self._wall, "cpu_seconds": time.process_time() - self._cpu}
