"""Running under ``torchrun``: process group, shards, gathering, and who writes.

``gatescope train`` and ``gatescope analyze`` run unchanged under
``torchrun --nproc_per_node=N`` (or several nodes): :func:`setup` joins the process group that
torchrun's environment describes (gloo on CPU, NCCL on GPU). Training wraps the model in
DistributedDataParallel with a DistributedSampler; per-input work (feature extraction,
attacks) is split into contiguous shards whose results are gathered in rank order, so rows
come out in the same order as in one process. Only rank 0 writes files; the others wait at a
barrier and then read what it wrote. Without torchrun every function here is a no-op.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def setup() -> None:
    """Join torchrun's process group if this process was started by torchrun with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shard(n: int) -> range:
    """This process's contiguous share of ``range(n)`` (rank r gets the r-th of ``world()`` parts)."""
    w, r = world(), rank()
    return range(n * r // w, n * (r + 1) // w)


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (on every process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
