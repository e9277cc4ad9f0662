"""The run's tensor store: which backend, the local Mooncake master if one is needed, client factories.

Factories are picklable (module-level functions + partial) so each actor builds its own client on
its own node: a Mooncake client announces that node's IP, and Ray-store objects are owned by one
long-lived actor rather than by the producer that wrote them.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from longdraft.config import Config
from longdraft.store.base import TensorStore


def _ray_store(owner) -> TensorStore:
    from longdraft.store.ray_store import RayTensorStore

    return RayTensorStore(owner)


def _mooncake_store(mooncake_cfg, master_address: str, lend_segment: bool) -> TensorStore:
    import ray

    from longdraft.store.mooncake_store import MooncakeStoreOptions, MooncakeTensorStore

    options = MooncakeStoreOptions.from_config(mooncake_cfg, master_address,
                                               local_hostname=ray.util.get_node_ip_address())
    if not lend_segment:  # producers lend memory to the pool (the shards live there); trainers only read
        options = replace(options, global_segment_size=0)
    return MooncakeTensorStore(options)


class StoreService:
    def __init__(self, cfg: Config, owner=None):
        self.backend = cfg.store.backend
        self.owner = owner
        self.master = None
        self.master_address = None
        if self.backend == "mooncake":
            mc = cfg.store.mooncake
            self.master_address = mc.master_address
            if self.master_address is None:
                from longdraft.store.mooncake_master import MooncakeMaster

                self.master = MooncakeMaster(host=_driver_ip()).start()
                self.master_address = self.master.address
            self._mooncake_cfg = mc

    def producer_factory(self):
        if self.backend == "ray":
            return partial(_ray_store, self.owner)
        return partial(_mooncake_store, self._mooncake_cfg, self.master_address, True)

    def trainer_factory(self):
        if self.backend == "ray":
            return partial(_ray_store, None)  # trainers only read
        return partial(_mooncake_store, self._mooncake_cfg, self.master_address, False)

    def keys_left(self) -> int | None:
        """Keys the Mooncake master still holds (None for Ray: see the put/deleted counts)."""
        return self.master.key_count() if self.master is not None else None

    def close(self) -> None:
        if self.master is not None:
            self.master.stop()


def _driver_ip() -> str:
    """This node's IP in the Ray cluster, so every node reaches a master started here."""
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
