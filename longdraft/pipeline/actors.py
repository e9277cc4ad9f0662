"""Ray actor classes of the pipeline (built on demand so importing longdraft never needs Ray)."""

from __future__ import annotations

import torch

from longdraft.config import Config
from longdraft.pipeline.controller import Controller
from longdraft.pipeline.producer import Producer
from longdraft.pipeline.trainer_rank import TrainerRank
from longdraft.sharding.layout import ShardGrid


class _ProducerWithEngine(Producer):
    def __init__(self, producer_id: int, cfg: Config, store_factory, run_key: str):
        from longdraft.engines.factory import build_engine

        torch.set_num_threads(1)
        t = cfg.training
        device = torch.device("cuda" if torch.cuda.is_available() and t.device != "cpu" else "cpu")
        engine = build_engine(cfg, device, output_device=torch.device("cpu"))
        super().__init__(producer_id, engine, store_factory(), ShardGrid.from_training(t), run_key)


def producer_actor(num_cpus: float):
    import ray

    gpus = 0.5 if torch.cuda.is_available() else 0  # shares the device with a trainer on one-GPU machines
    return ray.remote(num_cpus=num_cpus, num_gpus=gpus)(_ProducerWithEngine)


def controller_actor():
    import ray

    # Threaded: trainers report progress (mark) while run() is dispatching.
    return ray.remote(num_cpus=0, max_concurrency=8)(Controller)


def trainer_actor(num_cpus: float, use_gpu: bool):
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=0.5 if use_gpu else 0)(TrainerRank)
