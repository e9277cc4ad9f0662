"""One rank of a world of N in this process: torch's fake process group.

Collectives return at once without moving data. All-to-all and all-gather hand back this rank's own
input (correct shapes), all-reduce leaves its tensor as it was, and a ring receive completes with its
buffer untouched (``torch.empty``: any bits): ``ZeroFilledReceives`` zero-fills those buffers, so the
step stays finite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from longdraft.errors import UserError


@contextlib.contextmanager
def fake_world(world: int, rank: int) -> Iterator[None]:
    """``init_process_group("fake")`` as rank ``rank`` of ``world`` for the duration of the block."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    if world < 1 or not 0 <= rank < world:
        raise UserError(f"--rank {rank} --world {world}: expected world >= 1 and 0 <= rank < world")
    if dist.is_initialized():
        raise RuntimeError("plan needs its own (fake) process group, but one is already initialised")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


class ZeroFilledReceives(TorchDispatchMode):
    """Every ``recv`` of the fake group leaves zeros in its buffer (it writes nothing itself)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func is torch.ops.c10d.recv_.default:
            for buffer in args[0]:
                buffer.zero_()
        return result
