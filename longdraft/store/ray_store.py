"""Embedded default store: Ray's object store, one object per SP shard.

The handle carries one ObjectRef per shard, so a trainer fetches only its own. Deleting drops
this process's reference; Ray frees the object once no process references it (use
`SampleHandle.for_rank` when fanning out, so queue ``r`` only references shard ``r``).
Objects are owned by the process that put them, and a shard is lost if its owner dies before it
is read. With ``owner`` (a handle of a long-lived ``ShardOwner`` actor) that actor puts the shards,
so they outlive the producer that wrote them (at the cost of one more copy in the object store).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from longdraft.store.base import SampleHandle, StoreError, TensorStore, check_rank, shard_nbytes


class RayTensorStore(TensorStore):
    def __init__(self, owner: Any | None = None) -> None:
        super().__init__()
        self._owner = owner

    def put_sample(self, key: str, shards: Sequence[Mapping[str, torch.Tensor]]) -> SampleHandle:
        import ray

        if not shards:
            raise StoreError(f"sample {key!r}: no shards to put")
        payload = [{n: t.detach().contiguous() for n, t in s.items()} for s in shards]
        if self._owner is not None:
            refs = ray.get(self._owner.put_shards.remote(payload))
        else:
            refs = [ray.put(s) for s in payload]
        sizes = tuple(shard_nbytes(s) for s in shards)
        self._stats.add(keys_put=len(shards), bytes_put=sum(sizes))
        return SampleHandle(key=key, num_shards=len(shards), shard_nbytes=sizes, refs=refs)

    def get_shard(self, handle: SampleHandle | str, r: int, *, delete: bool = True) -> dict[str, torch.Tensor]:
        import ray

        ref = self._ref(handle, r)
        try:
            shard = ray.get(ref)
        except ray.exceptions.RayError as e:
            raise StoreError(
                f"sample {handle.key!r} shard {r}: Ray could not fetch the object ({type(e).__name__}: {e})"
            ) from e
        self._stats.add(keys_read=1, bytes_read=shard_nbytes(shard))
        if delete:
            self.delete(handle, r)
        return dict(shard)

    def delete(self, handle: SampleHandle | str, r: int) -> None:
        handle = self._handle(handle)
        check_rank(handle, r)
        if handle.refs[r] is not None:
            handle.refs[r] = None  # drop our reference; Ray frees the object when nobody holds one
            self._stats.add(keys_deleted=1)

    def exists(self, handle: SampleHandle | str, r: int) -> bool:
        handle = self._handle(handle)
        check_rank(handle, r)
        return handle.refs[r] is not None

    def _ref(self, handle: SampleHandle | str, r: int) -> Any:
        handle = self._handle(handle)
        check_rank(handle, r)
        if handle.refs[r] is None:
            raise StoreError(
                f"sample {handle.key!r} shard {r}: this handle holds no reference to it "
                "(already read and deleted, or a handle narrowed to another rank by for_rank)"
            )
        return handle.refs[r]

    @staticmethod
    def _handle(handle: SampleHandle | str) -> SampleHandle:
        if not isinstance(handle, SampleHandle) or handle.refs is None:
            raise StoreError(
                f"the Ray store needs the SampleHandle returned by put_sample (it holds the ObjectRefs); got {handle!r}"
            )
        return handle


class ShardOwner:
    """Actor body: ``put_shards`` returns refs this actor owns (nested refs stay owned by the putter)."""

    def put_shards(self, shards: list[dict[str, torch.Tensor]]) -> list[Any]:
        import ray

        return [ray.put(s) for s in shards]
