"""Distributed data-parallel training under ``torchrun``: process group, device, helpers.

``torchrun --nproc_per_node=K -m pushforward train ...`` starts K processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT`` set; ``init()`` joins the group (NCCL when
CUDA is there, gloo on CPU), ``fit`` then wraps the flow in ``DistributedDataParallel``, gives each
rank its shard through a ``DistributedSampler`` and lets rank 0 alone write checkpoints and plots.
ActNorm's data-dependent initialisation all-reduces its moments, so every rank starts the same.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "launched",
    "init",
    "shutdown",
    "is_active",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "device",
    "all_reduce_sum",
    "broadcast_float",
]


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process.

    Returns:
        True under ``torchrun`` with ``WORLD_SIZE > 1``.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_active() -> bool:
    """Whether a process group is initialised.

    Returns:
        True once ``init`` has joined a process group.
    """
    return dist.is_available() and dist.is_initialized()


def init(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment (no-op if not launched).

    Args:
        backend: ``"nccl"`` or ``"gloo"``; None: NCCL when CUDA is available, else gloo.
        timeout_s: the process group's timeout in seconds.

    Returns:
        True if a process group is active afterwards.
    """
    if is_active():
        return True
    if not launched():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Leave the process group, if any."""
    if is_active():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without a process group).

    Returns:
        The global rank.
    """
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    """The number of processes (1 without a process group).

    Returns:
        The world size.
    """
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """Whether this is rank 0 (the one that writes files and prints).

    Returns:
        True on rank 0 (and without a process group).
    """
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_active():
        dist.barrier()


def device() -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under NCCL, else CPU.

    Returns:
        ``torch.device("cuda", LOCAL_RANK)`` under NCCL, else ``torch.device("cpu")``.
    """
    if is_active() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _comm_device() -> torch.device:
    return device() if is_active() else torch.device("cpu")


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum ``values`` over ranks (identity without a process group).

    Args:
        values: a tensor, the same shape on every rank.

    Returns:
        The element-wise sum over ranks, detached and in float64 (``values`` itself without a
        process group).
    """
    if not is_active():
        return values
    out = values.detach().to(_comm_device(), torch.float64).clone()
    dist.all_reduce(out)
    return out.to(values.device)


def broadcast_float(value: float, src: int = 0) -> float:
    """Rank ``src``'s ``value`` on every rank.

    Args:
        value: this rank's value.
        src: the rank whose value is sent.

    Returns:
        ``src``'s value.
    """
    if not is_active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.broadcast(t, src)
    return float(t.item())


def all_gather_tensor(value: Tensor) -> list[Tensor]:
    """Every rank's copy of a same-shaped tensor, in rank order (CPU)."""
    if not is_active():
        return [value]
    local = value.to(_comm_device())
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]
