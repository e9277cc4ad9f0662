"""Micro-batches kept on the host and moved to the device one at a time, as the step reads them.

A rank's queued and held-out shards stay in host memory (pinned when the device is CUDA, so the copy
is asynchronous); ``DeviceBatches`` hands the step each micro-batch on the device and starts copying
the next one on a side stream while the step computes (CUDA only; elsewhere the copy happens when the
step asks). Between steps nothing of it stays on the device: the device holds what the step needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from longdraft.sharding.batch import ShardBatch


def batch_bytes(batch: ShardBatch) -> int:
    return sum(t.numel() * t.element_size() for t in batch.tensors().values())


def to_host(batch: ShardBatch, device: torch.device) -> ShardBatch:
    """``batch`` in host memory, pinned when it will be copied to a CUDA device."""
    host = batch.to("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        host = host.map_tensors(lambda t: t.pin_memory())
    return host


class DeviceBatches(Sequence):
    """A step's micro-batches: held on the host, each returned on ``device`` when read.

    ``ahead``: copy the next micro-batch while the step computes the current one (default: on CUDA,
    where the copy runs on a side stream). ``on_copy`` sees every device copy (the plan labels them)."""

    def __init__(
        self,
        host: list[ShardBatch],
        device: torch.device,
        ahead: bool | None = None,
        on_copy: Callable[[ShardBatch], None] | None = None,
        copy: bool = False,
    ):
        self.host, self.device, self.on_copy, self.copy = list(host), torch.device(device), on_copy, copy
        self.ahead = self.device.type == "cuda" if ahead is None else ahead
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __len__(self) -> int:
        return len(self.host)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._copy(b) for b in self.host[i]]
        return self._wait(self._copy(self.host[i]))

    def __iter__(self) -> Iterator[ShardBatch]:
        pending = self._copy(self.host[0]) if self.host and self.ahead else None
        for i, host in enumerate(self.host):
            current = self._wait(pending if pending is not None else self._copy(host))
            pending = self._copy(self.host[i + 1]) if self.ahead and i + 1 < len(self.host) else None
            yield current
            current = None  # the step's own references keep it as long as it needs

    def host_bytes(self) -> int:
        return sum(batch_bytes(b) for b in self.host)

    def query_tokens(self) -> int:
        return sum(b.query_tokens() for b in self.host)

    def _copy(self, batch: ShardBatch) -> ShardBatch:
        if self._stream is None:
            moved = batch.map_tensors(lambda t: t.to(self.device, copy=self.copy))
        else:
            with torch.cuda.stream(self._stream):
                moved = batch.map_tensors(lambda t: t.to(self.device, non_blocking=True))
        if self.on_copy is not None:
            self.on_copy(moved)
        return moved

    def _wait(self, batch: ShardBatch) -> ShardBatch:
        """The compute stream waits for the side stream's copy, and owns the tensors from here on."""
        if self._stream is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(self._stream)
            for t in batch.tensors().values():
                t.record_stream(main)
        return batch
