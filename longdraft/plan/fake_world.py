"""One rank of a world of N in this process: torch's fake process group.

Collectives return at once without moving data. All-to-all and all-gather hand back this rank's own
input (correct shapes), all-reduce leaves its tensor as it was, and a ring receive completes with its
buffer untouched: ``StepMemTracker`` zero-fills those buffers, so the step stays finite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist

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
