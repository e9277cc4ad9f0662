"""Optional timing of the communication that blocks compute (for the benchmark).

Only the time a rank spends *waiting* is counted: the blocking all-to-alls and the waits on ring
transfers. Transfers hidden behind compute do not show up, which is the point of measuring.
Bytes are what this rank sends, per collective kind (what crosses the links). On CUDA, timing
synchronises the device, so only enable it when measuring.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from longdraft.phase_times import timed_into


class CommStats:
    """``time_waits=False`` records bytes only (no device synchronisation: for training on CUDA)."""

    def __init__(self, time_waits: bool = True) -> None:
        self.time_waits = time_waits
        self.seconds: dict[str, float] = defaultdict(float)
        self.bytes: dict[str, int] = defaultdict(int)

    def add(self, kind: str, seconds: float) -> None:
        self.seconds[kind] += seconds

    def add_bytes(self, kind: str, nbytes: int) -> None:
        self.bytes[kind] += int(nbytes)

    def timed(self, kind: str, device: torch.device):
        return timed_into(self.seconds, kind, device)

    def reset(self) -> None:
        self.seconds.clear()
        self.bytes.clear()

    def total(self) -> float:
        return sum(self.seconds.values())

    def total_bytes(self) -> int:
        return sum(self.bytes.values())


@contextmanager
def maybe_timed(stats: CommStats | None, kind: str, device: torch.device, nbytes: int = 0) -> Iterator[None]:
    if stats is None:
        yield
        return
    stats.add_bytes(kind, nbytes)
    if not stats.time_waits:
        yield
        return
    with stats.timed(kind, device):
        yield
