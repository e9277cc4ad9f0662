"""What one training step spent: the wall time of its phases, the bytes and waits of its communication.

One ``StepMeter`` per rank, handed down explicitly (the step, the attention backend, the loss, the
collectives), never reached through a global: on CUDA the backward runs in autograd's own threads,
so each autograd function keeps the meter on its ``ctx``. ``train_step`` starts it afresh each step.

- ``lap(name)``: the step's own phases (forward, backward, the gradient sum's exposed wait,
  optimizer), summed over micro-batches. When the meter times, a lap on CUDA synchronises once, so the
  times are the device's; when it does not (CUDA's default), laps never synchronise and report host
  wall time: the time the host spent launching each phase plus any wait it could not avoid.
- ``phase(meter, kind, device)``: a compute phase inside them (attention, loss), timed inside its
  autograd function, so its backward counts too.
- ``communicating(meter, kind, device, nbytes)``: communication that blocks compute. Bytes are what this rank
  sends, per collective kind; only the time a rank *waits* is counted, so transfers hidden behind
  compute do not show up, which is the point of measuring.

Phases and waits synchronise a CUDA device at every call, so ``timing`` is off there unless asked for
(the benchmarks); laps (host wall time without it) and bytes are always measured.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _now(device: torch.device | None) -> float:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextmanager
def _timed(into: dict[str, float], kind: str, device: torch.device) -> Iterator[None]:
    start = _now(device)
    try:
        yield
    finally:
        into[kind] += _now(device) - start


class StepMeter:
    def __init__(self, timing: bool = True) -> None:
        self.timing = timing
        self.comm_bytes: dict[str, int] = defaultdict(int)  # collective kind -> bytes this rank sent
        self.comm_wait_s: dict[str, float] = defaultdict(float)  # collective kind -> seconds waited
        self._laps: dict[str, float] = defaultdict(float)
        self._phases: dict[str, float] = defaultdict(float)
        self._device: torch.device | None = None
        self._lap_start = 0.0

    @classmethod
    def for_device(cls, device: torch.device) -> StepMeter:
        """Timing of phases and waits off on CUDA, where it would synchronise the device at every call."""
        return cls(timing=device.type != "cuda")

    def start(self, device: torch.device) -> None:
        """A new step: forget the last one and start the first lap."""
        for measured in (self.comm_bytes, self.comm_wait_s, self._laps, self._phases):
            measured.clear()
        self._device = device
        self._lap_start = self._clock()

    def _clock(self) -> float:
        # Untimed laps must not synchronise: a sync per lap stalls the launch queue every micro-batch.
        return _now(self._device if self.timing else None)

    def lap(self, name: str) -> None:
        now = self._clock()
        self._laps[name] += now - self._lap_start
        self._lap_start = now

    @property
    def time_s(self) -> dict[str, float]:
        """The laps (``forward_s``, ``backward_s``, ``grad_sum_s``, ``optimizer_s``) and the phases
        inside them (``attention_s``, ``loss_s``, when timed)."""
        return {**self._laps, **self._phases}

    def add_bytes(self, kind: str, nbytes: int) -> None:
        self.comm_bytes[kind] += int(nbytes)

    def comm_wait_total(self) -> float:
        return sum(self.comm_wait_s.values())


@contextmanager
def phase(meter: StepMeter | None, kind: str, device: torch.device) -> Iterator[None]:
    """Adds the block's wall time to ``meter``'s phase ``kind`` (when it times)."""
    if meter is None or not meter.timing:
        yield
        return
    with _timed(meter._phases, kind, device):
        yield


@contextmanager
def communicating(meter: StepMeter | None, kind: str, device: torch.device, nbytes: int = 0) -> Iterator[None]:
    """Counts ``nbytes`` sent and (when the meter times) the block's wait under collective ``kind``."""
    if meter is None:
        yield
        return
    meter.add_bytes(kind, nbytes)
    if not meter.timing:
        yield
        return
    with _timed(meter.comm_wait_s, kind, device):
        yield
