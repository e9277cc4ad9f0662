"""Tensor store interface: a producer puts the S shards of a sample, each trainer rank reads
and deletes only its own shard.

A shard is a ``dict[str, Tensor]``: ``input_ids`` int64 [T], ``aux_hidden`` [T, 3H],
``last_hidden`` [T, H], optionally ``loss_mask`` [T], and the int64 ``shard_header``
(see `longdraft/sharding/`). The `SampleHandle` returned by `put_sample` is small and picklable;
it travels in the sample metadata to every rank of the SP group.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch


class StoreError(RuntimeError):
    """A tensor store operation failed; the message names the key and the cause."""


@dataclass
class SampleHandle:
    key: str
    num_shards: int
    shard_nbytes: tuple[int, ...]
    refs: list[Any] | None = None  # backend-specific per-shard references (Ray ObjectRefs), else None
    node: str | None = None  # the Ray node whose object store holds the shards (Ray store), else None

    def for_rank(self, r: int) -> SampleHandle:
        """A copy that keeps only shard ``r``'s reference, for the queue of SP rank ``r``: no
        trainer then holds (and keeps alive) another rank's shard."""
        check_rank(self, r)
        if self.refs is None:
            return replace(self)
        return replace(self, refs=[ref if i == r else None for i, ref in enumerate(self.refs)])


def shard_key(key: str, r: int) -> str:
    return f"{key}_usp{r}"


def check_rank(handle: SampleHandle, r: int) -> None:
    if not 0 <= r < handle.num_shards:
        raise StoreError(f"sample {handle.key!r}: shard {r} is outside [0, {handle.num_shards})")


def shard_nbytes(shard: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in shard.values())


@dataclass
class StoreStats:
    """Counters of what THIS store instance did (a process's view; thread-safe)."""

    keys_put: int = 0
    keys_read: int = 0
    keys_deleted: int = 0
    bytes_put: int = 0
    full_waits: int = 0  # puts that waited for a full store to drain
    bytes_read: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            d = {
                k: getattr(self, k)
                for k in ("keys_put", "keys_read", "keys_deleted", "bytes_put", "bytes_read", "full_waits")
            }
        d["keys_alive"] = d["keys_put"] - d["keys_deleted"]
        return d


class TensorStore(ABC):
    """One key per SP shard; `get_shard` by default deletes the shard once read."""

    def __init__(self) -> None:
        self._stats = StoreStats()

    @abstractmethod
    def put_sample(self, key: str, shards: Sequence[Mapping[str, torch.Tensor]]) -> SampleHandle:
        """Store the S shards of sample ``key``; returns the handle readers need."""

    @abstractmethod
    def get_shard(self, handle: SampleHandle | str, r: int, *, delete: bool = True) -> dict[str, torch.Tensor]:
        """Shard ``r`` of a sample (only that shard is transferred); deleted after the read unless
        ``delete=False``."""

    @abstractmethod
    def delete(self, handle: SampleHandle | str, r: int) -> None:
        """Release shard ``r`` (e.g. of a skipped sample). Deleting an absent shard is a no-op."""

    @abstractmethod
    def exists(self, handle: SampleHandle | str, r: int) -> bool:
        """Whether shard ``r`` is still held by the store."""

    def stats(self) -> dict[str, int]:
        """keys_put/read/deleted, bytes_put/read, keys_alive (this instance's counters)."""
        return self._stats.as_dict()

    def worker_spec(self) -> dict | None:
        """How another process on this node (an inference engine's worker) opens a client of this
        store that writes but lends nothing; None when only this process can write (Ray)."""
        return None

    def count_external_put(self, *, keys: int, nbytes: int) -> None:
        """Count puts that such a worker made on this store's behalf, so `stats` stays complete."""
        self._stats.add(keys_put=keys, bytes_put=nbytes)

    def discard(self, key: str, num_shards: int) -> None:
        """Remove whatever exists of sample ``key`` (a write that may have been cut short); a store
        whose objects die with their last reference (Ray) has nothing to do."""

    def close(self) -> None:
        """Release client resources; the store object is unusable afterwards."""

    def __enter__(self) -> TensorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
