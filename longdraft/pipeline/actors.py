"""Ray actor classes of the pipeline (built on demand so importing longdraft never needs Ray)."""

from __future__ import annotations

import torch

from longdraft.config import Config
from longdraft.device import placed_device
from longdraft.pipeline.controller import Controller
from longdraft.pipeline.producer import Producer
from longdraft.pipeline.trainer_rank import TrainerRank
from longdraft.sharding.layout import ShardGrid


class _ProducerWithEngine(Producer):
    def __init__(self, producer_id: int, cfg: Config, store_factory, run_key: str):
        from longdraft.engines.factory import build_engine

        torch.set_num_threads(1)
        t = cfg.training
        device = placed_device(t.device)
        store = store_factory()
        engine = build_engine(cfg, device, output_device=torch.device("cpu"), store=store)
        super().__init__(producer_id, engine, store, ShardGrid.from_training(t), run_key)


def producer_actor(options: dict):
    import ray

    return ray.remote(_ProducerWithEngine).options(**options)


def controller_actor():
    import ray

    # Threaded: trainers report progress (mark, heartbeat) while run() is dispatching.
    return ray.remote(num_cpus=0, max_concurrency=16)(Controller)


def trainer_actor(options: dict):
    import ray

    return ray.remote(TrainerRank).options(**options)


def shard_owners_actor():
    import ray

    from longdraft.store.ray_store import ShardOwners

    return ray.remote(num_cpus=0)(ShardOwners)  # one call at a time: never two owners for one node
