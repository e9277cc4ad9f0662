"""Embedded default store: Ray's object store, one object per SP shard.

The handle carries one ObjectRef per shard, so a trainer fetches only its own. Deleting drops
this process's reference; Ray frees the object once no process references it (use
`SampleHandle.for_rank` when fanning out, so queue ``r`` only references shard ``r``).
Objects are owned by the process that put them, and a shard is lost if its owner dies before it
is read. With ``owners`` (a handle of the run's ``ShardOwners`` actor) the shards are put by a
long-lived ``ShardOwner`` on the producer's own node, so they outlive the producer that wrote them
and their bytes stay in that node's object store until a trainer reads them (one more copy on that
node, no network copy; ``SampleHandle.node`` names the node, so the in-flight budget counts them
there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from longdraft.store.base import SampleHandle, StoreError, TensorStore, check_rank, shard_nbytes


class RayTensorStore(TensorStore):
    def __init__(self, owners: Any | None = None) -> None:
        import ray

        super().__init__()
        self._node = ray.get_runtime_context().get_node_id()
        # This node's owner; asked once: a producer Ray restarts elsewhere builds a new store there.
        self._owner = ray.get(owners.owner_on.remote(self._node)) if owners is not None else None

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
        return SampleHandle(key=key, num_shards=len(shards), shard_nbytes=sizes, refs=refs, node=self._node)

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
    """Actor body: ``put_shards`` returns refs this actor owns (nested refs stay owned by the putter).
    Its puts land in its own node's object store, so it runs on the node of the producers it serves."""

    def put_shards(self, shards: list[dict[str, torch.Tensor]]) -> list[Any]:
        import ray

        return [ray.put(s) for s in shards]


class ShardOwners:
    """Actor body: the run's ``ShardOwner`` per node, started on that node the first time a producer
    there asks. The owners are this actor's children: they live as long as it (the whole run) and
    die with it."""

    def __init__(self) -> None:
        self._owners: dict[str, Any] = {}

    def owner_on(self, node_id: str) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if node_id not in self._owners:
            on_node = NodeAffinitySchedulingStrategy(node_id, soft=False)
            actor = ray.remote(num_cpus=0, max_concurrency=8)(ShardOwner)
            self._owners[node_id] = actor.options(scheduling_strategy=on_node).remote()
        return self._owners[node_id]

    def owners(self) -> dict[str, Any]:
        """Node id -> that node's owner: the nodes whose producers put shards."""
        return dict(self._owners)
