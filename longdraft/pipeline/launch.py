"""Run the disaggregated pipeline on Ray: producers, controller and trainer ranks as actors.

Local mode starts Ray on 127.0.0.1 (fractional CPUs per actor); cluster mode connects to
``RAY_ADDRESS``. Any actor that fails stops the run with its error and rank; nothing waits forever.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from longdraft.config import Config
from longdraft.data.dataset import Sample
from longdraft.pipeline.records import PromptItem
from longdraft.pipeline.stores import StoreService
from longdraft.store.mooncake_master import free_port
from longdraft.train.checkpoint import read_checkpoint
from longdraft.train.loop import LoopResult
from longdraft.train.sample_order import SampleOrder
from longdraft.train.setup import load_data, load_tokenizer, vocab_for

POLL_S = 0.5


def _prompts(cfg: Config, samples: list[Sample], start_position: int, steps: int) -> list[PromptItem]:
    order = SampleOrder(len(samples), cfg.training.seed, position=start_position)
    out = []
    for i in range(steps * cfg.training.batch_size):
        s = samples[order.take(1)[0]]
        out.append(PromptItem(start_position + i, s.sample_id, s.input_ids, s.packed_loss_mask))
    return out


def _held_out(cfg: Config, samples: list[Sample]) -> list[PromptItem] | None:
    if not cfg.evaluates_during_training:
        return None
    return [PromptItem(i, s.sample_id, s.input_ids, s.packed_loss_mask, held_out=True) for i, s in enumerate(samples)]


def _start_ray() -> bool:
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=False)
    return True


def _wait_all(named_futures: dict, actors: list, timeout_s: float) -> dict:
    """Wait for every future; the first failure kills all actors and raises with the failing name."""
    import ray

    pending = dict(named_futures)
    results = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        for future in done:
            name = pending.pop(future)
            try:
                results[name] = ray.get(future)
            except Exception as exc:
                for actor in actors:
                    ray.kill(actor, no_restart=True)
                cause = getattr(exc, "cause", None) or exc  # the actor's own exception, without Ray's wrapper
                raise RuntimeError(f"{name} failed; the run was stopped: {type(cause).__name__}: {cause}") from exc
        if time.monotonic() > deadline:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            raise TimeoutError(f"run did not finish within {timeout_s:.0f} s; still waiting for {sorted(pending.values())}")
    return results


def run_pipeline(cfg: Config, checkpoint: Path | None, timeout_s: float = 6 * 3600) -> LoopResult:
    """Train with ``training.num_trainers`` rank actors; returns rank 0's loop result."""
    import ray
    from ray.util.queue import Queue

    from longdraft.pipeline.actors import controller_actor, producer_actor, trainer_actor

    t = cfg.training
    out = Path(cfg.output.dir)
    data = load_data(cfg, load_tokenizer(cfg))
    for report in data.reports:
        print(report.summary())
    state = read_checkpoint(checkpoint) if checkpoint is not None else None
    start_step = state["step"] if state else 0
    start_position = state["extra"]["samples_consumed"] if state else 0
    vocab = vocab_for(cfg, data.train)
    prompts = _prompts(cfg, data.train, start_position, t.num_steps - start_step)
    started_ray = _start_ray()
    store = StoreService(cfg)
    actors = []
    try:
        world, dp, sp = t.num_trainers, cfg.dp_size, cfg.sp_size
        cpus = 0.5 if not os.environ.get("RAY_ADDRESS") else 1
        queues = [[Queue(maxsize=2 * t.batch_size, actor_options={"num_cpus": 0}) for _ in range(sp)] for _ in range(dp)]
        run_key = uuid.uuid4().hex[:8]
        producers = [
            producer_actor(cpus).remote(i, cfg, store.producer_factory(), run_key) for i in range(cfg.inference.num_producers)
        ]
        controller = controller_actor().remote(prompts, producers, queues, t.batch_size,
                                               pool_size=max(2 * t.batch_size, cfg.inference.batch_size),
                                               producer_batch=cfg.inference.batch_size,
                                               held_out=_held_out(cfg, data.eval))
        port = free_port()
        trainers = [
            trainer_actor(cpus, use_gpu=_has_gpu(cfg)).remote(
                rank, world, cfg, port, queues[rank // sp][rank % sp], controller, store.trainer_factory(),
                vocab.draft_to_target, len(data.train), start_position, str(checkpoint) if checkpoint else None)
            for rank in range(world)
        ]
        actors = [*producers, controller, *trainers]
        _wait_all({trainer.setup.remote(): f"trainer rank {r} (setup)" for r, trainer in enumerate(trainers)}, actors, 600)
        futures = {controller.run.remote(): "controller"}
        futures.update({trainer.train.remote(): f"trainer rank {r}" for r, trainer in enumerate(trainers)})
        results = _wait_all(futures, actors, timeout_s)
        summary = ray.get(controller.summary.remote())
        producer_reports = ray.get([p.report.remote() for p in producers])
        ray.get([trainer.shutdown.remote() for trainer in trainers])
        loop: LoopResult = results["trainer rank 0"]["loop"]
        summary.update(producers=producer_reports, keys_left=store.keys_left(),
                       samples_skipped=dict(data.skipped + loop.skipped), data=[r.summary() for r in data.reports],
                       ranks=[results[f"trainer rank {r}"]["report"] for r in range(world)])
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if summary["lost"]:
            raise RuntimeError(f"{summary['lost']} samples were lost between producers and trainers: {summary}")
        return loop
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        store.close()
        if started_ray:
            ray.shutdown()


def _has_gpu(cfg: Config) -> bool:
    import torch

    return cfg.training.device != "cpu" and torch.cuda.is_available()
