"""Hostile files shared by the tests of the loaders, the app and the browser: the bad kinds of
run upload with the reason each must be refused for, a decompression-bomb PNG, and an
analysed run whose stored features were tampered with."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib

import numpy as np
import safetensors.torch
import torch

from conftest import DEFAULT_RUN
from models.files import sha256_bytes

WEIGHTS = (DEFAULT_RUN / "model.safetensors").read_bytes()
META = json.loads((DEFAULT_RUN / "model.json").read_text())


def meta_json(**changes) -> bytes:
    return json.dumps({**META, **changes}).encode()


def _nan_weights() -> tuple[bytes, bytes]:
    weights = safetensors.torch.load(WEIGHTS)
    next(v for k, v in weights.items() if k.endswith("conv.weight")).view(-1)[0] = float("nan")
    data = safetensors.torch.save(weights)
    return data, meta_json(weights_sha256=sha256_bytes(data))


class Payload:
    """Unpickling this calls os.system, which creates ``marker``: the classic pickle exploit."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickled_payload(marker) -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload(marker)}, buf)
    return buf.getvalue()


def bad_runs(marker):
    nan_w, nan_m = _nan_weights()
    return {
        "corrupt weights": ("model.safetensors", b"\x00" * 64, meta_json(weights_sha256="")),
        "weights of another file": ("model.safetensors", WEIGHTS[:-8] + b"\x00" * 8, meta_json()),
        "not JSON": ("model.safetensors", WEIGHTS, b"{\"arch\": "),
        "foreign JSON": ("model.safetensors", WEIGHTS, b"[1, 2, 3]"),
        "unknown architecture": ("model.safetensors", WEIGHTS, meta_json(arch="transformer")),
        "absurd size": ("model.safetensors", WEIGHTS, meta_json(arch_args={**META["arch_args"], "widths": [10**9] * 5})),
        "NaN weights": ("model.safetensors", nan_w, nan_m),
        "pickle payload": ("evil.pt", _pickled_payload(marker), meta_json()),
        "random .pt": ("w.pth", os.urandom(500), meta_json()),
    }


REFUSED_BECAUSE = {
    "corrupt weights": "not a readable safetensors file", "weights of another file": "SHA-256 differs",
    "not JSON": "not valid JSON", "foreign JSON": "expected a JSON object", "unknown architecture": "resnet20, resnet56, small_cnn",
    "absurd size": "arch_args.widths", "NaN weights": "NaN or infinite", "pickle payload": "refused: not a plain weights file",
    "random .pt": "not a plain weights file|not a readable torch weights file",
}


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (the pixels would be gigabytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    idat = zlib.compress(b"\x00" * 1024)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def tampered_copy(analysed_run, tmp_path):
    """A copy of an analysed run whose stored FGSM decision features hold one NaN (row 4)."""
    from analysis.store import AnalysisStore
    from models import load_run

    run_path = tmp_path / "tampered"
    shutil.copytree(analysed_run, run_path)
    store = AnalysisStore(load_run(run_path))
    values = store.array("attack-fgsm", "log_probs")
    values[4, 1, 2] = np.nan
    np.save(store.path / next(f for f in store._manifest()["entries"]["attack-fgsm"]["files"] if "log_probs" in f), values)
    return run_path
