"""Wall time of the compute phases of a training step (attention, loss), forward and backward.

The phases are timed inside their autograd functions, so their backward counts too. On CUDA a
timed phase synchronises the device, so timing is off there unless asked for (the benchmark).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class PhaseTimes:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.seconds: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.seconds.clear()


@contextmanager
def timed_into(seconds: dict[str, float], kind: str, device: torch.device) -> Iterator[None]:
    """Adds the wall time of the block to ``seconds[kind]`` (on CUDA: the device's, by synchronising)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[kind] += time.perf_counter() - start


@contextmanager
def phase(times: PhaseTimes | None, kind: str, device: torch.device) -> Iterator[None]:
    if times is None or not times.enabled:
        yield
        return
    with timed_into(times.seconds, kind, device):
        yield
