"""The run's tensor store: which backend, the local Mooncake master if one is needed, client factories.

Factories are picklable (module-level functions + partial) so each actor builds its own client on
its own node: a Mooncake client announces that node's IP, and Ray-store objects are owned by a
long-lived actor on the producer's node rather than by the producer that wrote them. By default the trainers lend the
Mooncake pool its memory (``store.mooncake.segments_on``), so shards outlive a producer that dies.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial

from longdraft.config import Config
from longdraft.errors import UserError
from longdraft.pipeline.sizes import SampleSizes, longest_stored, mib, sample_sizes
from longdraft.store.base import TensorStore
from longdraft.store.bind_address import master_bind_address


def _ray_store(owners) -> TensorStore:
    from longdraft.store.ray_store import RayTensorStore

    return RayTensorStore(owners)


def _mooncake_store(mooncake_cfg, master_address: str, lend_segment: bool) -> TensorStore:
    import ray

    from longdraft.store.mooncake_store import MooncakeStoreOptions, MooncakeTensorStore

    options = MooncakeStoreOptions.from_config(
        mooncake_cfg, master_address, local_hostname=ray.util.get_node_ip_address()
    )
    if not lend_segment:  # the shards live in the lenders' segments; the others only write or read
        options = replace(options, global_segment_size=0)
    return MooncakeTensorStore(options)


POOL_SHARE = 0.9  # of the Mooncake pool usable: the master keeps about a tenth free


class StoreCapacityError(UserError):
    """The store, as configured, cannot hold even one sample of the run."""


def lenders(cfg: Config) -> tuple[str, int]:
    """Which actors lend the Mooncake pool its memory, and how many of them there are."""
    if cfg.store.mooncake.segments_on == "trainers":
        return "trainers", cfg.training.num_trainers
    return "producers", cfg.inference.num_producers


def mooncake_sizes(cfg: Config, sizes: SampleSizes) -> tuple[int, int]:
    """(global segment per lending actor, local buffer) in MiB: the configured ones, checked against
    the longest sample, or defaults sized from it (room for two global batches over all lenders)."""
    mc, t = cfg.store.mooncake, cfg.training
    who, count = lenders(cfg)
    longest = longest_stored(t)  # a sample, or a packed micro-batch
    shard, sample = sizes.shard_bytes(longest), sizes.sample_bytes(longest)
    where = f"at {longest} tokens (training.max_seq_length, tokens_per_micro_batch), S={cfg.sp_size}"
    if mc.local_buffer_size_mb is not None and mc.local_buffer_size_mb << 20 < shard:
        raise StoreCapacityError(
            f"store.mooncake.local_buffer_size_mb = {mc.local_buffer_size_mb} cannot hold one shard "
            f"of the longest sample ({shard} bytes {where}): set it to at least {mib(shard)}"
        )
    if mc.global_segment_size_mb is not None:
        pool = count * (mc.global_segment_size_mb << 20) * POOL_SHARE
        if pool < sample:
            need = mib(int(sample / POOL_SHARE / count)) + 1
            raise StoreCapacityError(
                f"the Mooncake pool ({count} {who} x "
                f"store.mooncake.global_segment_size_mb = {mc.global_segment_size_mb}) cannot hold "
                f"one sample of {sample} bytes {where}: set global_segment_size_mb to at least {need}"
            )
        segment = mc.global_segment_size_mb
    else:
        segment = max(64, mib(int(2 * t.batch_size * sample / POOL_SHARE / count)))
    return segment, mc.local_buffer_size_mb or max(16, mib(shard) + 1)


class StoreService:
    def __init__(self, cfg: Config, owners=None, sizes: SampleSizes | None = None):
        """``owners``: the run's ``ShardOwners`` actor (Ray store), which starts an owner per producer node."""
        from longdraft.store.leash import reap_orphans

        reap_orphans()  # a master an earlier driver left when it was killed, whichever store this run uses
        self.backend = cfg.store.backend
        self.owners = owners
        self.master = None
        self.master_address = None
        self.capacity_bytes: int | None = None  # what the store can hold (Mooncake pool; None: Ray's own)
        if self.backend == "mooncake":
            segment, buffer = mooncake_sizes(cfg, sizes or sample_sizes(cfg))
            mc = replace(cfg.store.mooncake, global_segment_size_mb=segment, local_buffer_size_mb=buffer)
            self.capacity_bytes = int(lenders(cfg)[1] * (segment << 20) * POOL_SHARE)
            self.trainers_lend = lenders(cfg)[0] == "trainers"
            self.master_address = mc.master_address
            if self.master_address is None:
                from longdraft.store.mooncake_master import MooncakeMaster

                host = master_bind_address(mc.master_bind, auto=_driver_ip())
                self.master = MooncakeMaster(host=host).start()
                self.master_address = self.master.address
            elif mc.master_bind != "auto":
                raise UserError(
                    f"store.mooncake.master_bind = {mc.master_bind}: only a master that longdraft starts binds "
                    f"it, but store.mooncake.master_address = {mc.master_address} names a running one"
                )
            self._mooncake_cfg = mc

    def producer_factory(self):
        if self.backend == "ray":
            return partial(_ray_store, self.owners)
        return partial(_mooncake_store, self._mooncake_cfg, self.master_address, not self.trainers_lend)

    def trainer_factory(self):
        if self.backend == "ray":
            return partial(_ray_store, None)  # trainers only read
        return partial(_mooncake_store, self._mooncake_cfg, self.master_address, self.trainers_lend)

    def keys_left(self, wait_s: float = 0.0) -> int | None:
        """Keys the Mooncake master still holds (None for Ray: see the put/deleted counts), waiting up
        to ``wait_s`` for them to reach 0: a put that a dying producer left unfinished is dropped by
        the master only after its ``put_start_discard_timeout_sec`` (30 s by default)."""
        if self.master is None:
            return None
        deadline = time.monotonic() + wait_s
        while (count := self.master.key_count()) and time.monotonic() < deadline:
            time.sleep(1.0)
        return count

    def close(self) -> None:
        if self.master is not None:
            self.master.stop()


def _driver_ip() -> str:
    """This node's IP in the Ray cluster, so every node reaches a master started here."""
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
