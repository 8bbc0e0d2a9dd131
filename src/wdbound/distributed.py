"""Many processes with ``torch.distributed``: ``torchrun --nproc-per-node N -m wdbound ...``.

Each rank evaluates a contiguous share of the evaluation examples; every Hessian-vector product is summed
over the ranks with ``all_reduce`` (gloo on the CPU, NCCL on CUDA), so every rank holds the same full
product, draws the same probes from the same seed and runs the same estimators: the estimators do not
know about the processes (the sharded operator is a :class:`wdbound.curvature.HessianOperator` with
``shard=(rank, world)``). Rank 0 alone prints and writes files and cache entries; the spectrum cache is
not read in a multi-process run (a hit on one rank and a miss on another would leave the others waiting
in an all-reduce). The single-process and N-process results differ only by the order of floating-point
sums (measured: docs/low-memory.md).

Multi-node: ``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 -m
wdbound err ckpt.pt ...`` on every node, with the data and checkpoint at the same path on each.
"""

from __future__ import annotations

import os

import torch

from .errors import WdboundError


def world_from_env() -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` as torchrun sets them (``(0, 1, 0)`` outside torchrun)."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise WdboundError("RANK / WORLD_SIZE / LOCAL_RANK are not integers (start with torchrun)") from None


def init_from_env(timeout_minutes: float = 30.0) -> None:
    """Join the process group when started by torchrun with more than one process (idempotent)."""
    import datetime

    import torch.distributed as dist

    _rank, world, local_rank = world_from_env()
    if world <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("WDBOUND_DIST_BACKEND") != "gloo" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))


def shard() -> tuple[int, int] | None:
    """``(rank, world)`` inside an initialised multi-process group, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def is_main() -> bool:
    """Whether this process prints and writes (rank 0, or the only process)."""
    current = shard()
    return current is None or current[0] == 0


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index becomes this rank's GPU (``LOCAL_RANK``) in a multi-process run."""
    if device.type == "cuda" and device.index is None and shard() is not None:
        return torch.device("cuda", world_from_env()[2])
    return device


def finish() -> None:
    """Leave the process group (end of a torchrun command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
