"""Values every rank must share, agreed once by one collective (ARCHITECTURE.md, invariant 4).

A rank that decided from its own device (its memory, its kind) could choose differently from its
peers on mixed GPUs or MIG slices; a decision that picks collectives then hangs the group. Each
helper is one all-reduce, issued by every rank of ``group`` at the same point of start-up.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _agree(value: int, op, group, device: torch.device) -> int:
    # On the rank's own device: NCCL refuses CPU tensors, gloo takes them.
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=op, group=group)
    return int(t.item())


def agree_min(value: int, device: torch.device, group=None) -> int:
    """The smallest ``value`` over ``group`` (default: the world), the same on every rank."""
    return _agree(value, dist.ReduceOp.MIN, group, device)


def agree_max(value: int, device: torch.device, group=None) -> int:
    """The largest ``value`` over ``group`` (default: the world), the same on every rank."""
    return _agree(value, dist.ReduceOp.MAX, group, device)
