r"""Sharding work over the ranks of an initialised ``torch.distributed`` process group.

Launch with ``torchrun --nproc_per_node=R script.py`` (or any launcher that calls
``torch.distributed.init_process_group``): NCCL on GPUs, gloo on CPUs. Without an initialised
group everything runs in one process (rank 0 of 1). Blocks are split into contiguous ranges,
rank ``r`` of ``R`` taking blocks ``[r * n // R, (r + 1) * n // R)``; results do not depend on
``R`` because every block is computed by the same code whichever rank owns it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_rows", "barrier", "is_distributed", "shard", "world"]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    r"""``(rank, world_size)`` of the current process; ``(0, 1)`` without a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard(num_blocks: int, rank: int | None = None, size: int | None = None) -> tuple[int, int]:
    r"""The contiguous block range ``[first, stop)`` owned by ``rank`` of ``size``.

    Args:
        num_blocks (int): number of blocks.
        rank (int, optional): default: this process's rank.
        size (int, optional): default: the world size.

    Returns:
        (int, int): first block and one past the last.
    """
    if rank is None or size is None:
        rank, size = world()
    return rank * num_blocks // size, (rank + 1) * num_blocks // size


def barrier() -> None:
    """Waits for every rank (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(local: Tensor, num_rows: int) -> Tensor:
    r"""Concatenates every rank's contiguous rows (rank order) into one tensor on every rank.

    Args:
        local (Tensor): this rank's rows, (n_r, ...); ranks hold consecutive row ranges.
        num_rows (int): total rows over all ranks.

    Returns:
        Tensor: (num_rows, ...) on ``local``'s device; ``local`` itself without a group.
    """
    if not is_distributed():
        return local
    device = _collective_device()
    size = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([local.shape[0]], device=device))
    longest = int(max(int(c) for c in counts))
    padded = local.new_zeros((longest,) + tuple(local.shape[1:])).to(device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[: int(c)] for p, c in zip(parts, counts)])
    if out.shape[0] != num_rows:
        raise RuntimeError(f"gathered {out.shape[0]} rows from the ranks, expected {num_rows}.")
    return out.to(local.device)
