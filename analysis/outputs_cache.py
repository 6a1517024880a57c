"""Per-input outputs of a run on a split, kept in the run's analysis store.

Opening a run's pages needs every test input's decisions; recomputing them at each launch costs
a pass over the split (tens of seconds for CIFAR-10 on a CPU). They are stored as the entry
``outputs-<split>`` keyed, as every entry, by the weights' hash, and by the data: the dataset
spec, the number of images and a digest of a few of its images, so another copy of the data
with other images is evaluated afresh.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from models import Run

from .datasets import DatasetSplit, load_run_dataset
from .evaluation import Outputs, collect
from .store import AnalysisStore

_FIELDS = ("labels", "preds", "log_probs", "paths", "active", "macs")
_PROBE = 16  # images at each end of the split whose pixels enter the data digest


def stored_outputs(run: Run, split: str, *, batch_size: int = 256, progress: bool = False) -> Outputs:
    """The run's :class:`Outputs` on ``split`` of its own dataset: read from its analysis store
    when computed before for these weights and this data, else computed and stored (a run folder
    that cannot be written to is only read; one whose store holds another weights' analysis is
    left alone, so that the pages can still say the analysis is stale)."""
    data = load_run_dataset(run.meta, split)
    store = AnalysisStore(run)
    name, params = f"outputs-{split}", {"dataset": run.meta.dataset, "images": len(data), "digest": data_digest(data)}
    if store.has(name, params):
        return Outputs(**{f: store.array(name, f, params) for f in _FIELDS},
                       ungated_macs=int(store.data(name, params)["ungated_macs"]))
    out = collect(run.model, data, batch_size=batch_size, progress=progress)
    if store.stale():
        return out
    try:
        store.save(name, params, arrays={f: getattr(out, f) for f in _FIELDS}, data={"ungated_macs": out.ungated_macs},
                   compress=False)  # read at every launch: 0.2 s to decompress a CIFAR-10 test split's
    except OSError:
        pass  # a read-only run folder: the outputs are recomputed next time
    return out


def data_digest(split: DatasetSplit) -> str:
    """16 hex digits of the first and last ``_PROBE`` images and labels of ``split``."""
    n = len(split)
    h = hashlib.sha256()
    for i in sorted({*range(min(_PROBE, n)), *range(max(n - _PROBE, 0), n)}):
        x, y = split.dataset[i]
        h.update(np.ascontiguousarray(torch.as_tensor(x).numpy(), dtype=np.float32).tobytes())
        h.update(str(int(y)).encode())
    return h.hexdigest()[:16]
