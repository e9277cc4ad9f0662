"""Run the disaggregated pipeline on Ray: producers, controller and trainer ranks as actors.

Local mode starts Ray on 127.0.0.1 (fractional CPUs per actor); cluster mode connects to
``RAY_ADDRESS``. Any actor that fails stops the run with its error and rank; nothing waits forever.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from longdraft.config import Config
from longdraft.data.dataset import Sample
from longdraft.errors import UserError
from longdraft.pipeline.decisions import decided_for_ranks, trainer_device
from longdraft.pipeline.inflight import inflight_budget
from longdraft.pipeline.prompt_feed import FeedSpec
from longdraft.pipeline.ray_runtime import actor_cpus, start_ray
from longdraft.pipeline.records import PromptItem
from longdraft.pipeline.shared_output import check_shared_output
from longdraft.pipeline.sizes import sample_sizes
from longdraft.pipeline.stores import StoreService
from longdraft.train.checkpoint import checkpoint_extra
from longdraft.train.loop import LoopResult
from longdraft.train.setup import load_held_out, load_tokenizer, vocab_for
from longdraft.train.summary import write_summary

POLL_S = 0.5
LIVENESS_EVERY_S = 5.0


def _held_out(cfg: Config, samples: list[Sample]) -> list[PromptItem] | None:
    if not cfg.evaluates_during_training:
        return None
    return [PromptItem(i, s.sample_id, s.input_ids, s.packed_loss_mask, held_out=True) for i, s in enumerate(samples)]


PUT_DISCARD_WAIT_S = 40.0  # mooncake_master drops an unfinished put after 30 s (put_start_discard_timeout_sec)


def _stop(actors: list) -> None:
    import ray

    for actor in actors:
        ray.kill(actor, no_restart=True)


def stalled_rank(
    progress: dict[int, tuple[int, float]], world: int, stall_timeout_s: float, since_start: float
) -> str | None:
    """The first trainer rank with no finished step for ``stall_timeout_s``, described, or None.

    ``progress``: rank -> (last finished step, seconds since); a rank not in it has finished none
    since the start."""
    for rank in range(world):
        step, idle_s = progress.get(rank, (0, since_start))
        if idle_s > stall_timeout_s:
            others = {r: s for r, (s, _) in progress.items() if r != rank}
            return (
                f"trainer rank {rank} finished no step for {idle_s:.0f} s (cluster.stall_timeout_s = "
                f"{stall_timeout_s:.0f}); its last step was {step}, the other ranks reached {others}"
            )
    return None


def _wait_all(named_futures: dict, actors: list, timeout_s: float, liveness=None) -> dict:
    """Wait for every future; the first failure kills all actors and raises with the failing name.

    ``timeout_s`` 0 means no limit; ``liveness()`` (called every few seconds) returns a reason to stop
    the run, or None."""
    import ray

    pending = dict(named_futures)
    results = {}
    deadline = time.monotonic() + timeout_s if timeout_s else None
    next_check = time.monotonic() + LIVENESS_EVERY_S
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        for future in done:
            name = pending.pop(future)
            try:
                results[name] = ray.get(future)
            except Exception as exc:
                _stop(actors)
                cause = getattr(exc, "cause", None) or exc  # the actor's own exception, without Ray's wrapper
                if isinstance(cause, UserError):  # the user's to fix (a bad row found mid-run): one line, no type name
                    raise UserError(f"{name}: {cause}") from exc
                raise RuntimeError(f"{name} failed; the run was stopped: {type(cause).__name__}: {cause}") from exc
        if deadline is not None and time.monotonic() > deadline:
            _stop(actors)
            raise TimeoutError(
                f"run did not finish within {timeout_s:.0f} s (cluster.run_timeout_s); still waiting "
                f"for {sorted(pending.values())}"
            )
        if liveness is not None and pending and time.monotonic() > next_check:
            next_check = time.monotonic() + LIVENESS_EVERY_S
            reason = liveness()
            if reason:
                _stop(actors)
                raise TimeoutError(f"the run was stopped: {reason}")
    return results


def _tau_evaluator(cfg: Config, placement):
    """The actor that measures real τ by context length for rank 0 (``eval.every``), or None: its
    resources are `Placement.evaluator_options`; one that dies is reported, and training goes on
    (`pipeline/tau_evaluator.py`)."""
    if not cfg.eval.every:
        return None
    from longdraft.pipeline.tau_evaluator import tau_evaluator_actor

    return tau_evaluator_actor(placement.evaluator_options()).remote(cfg)


def run_pipeline(cfg: Config, checkpoint: Path | None) -> LoopResult:
    """Train with ``training.num_trainers`` rank actors; returns rank 0's loop result."""
    import ray
    from ray.util.queue import Queue

    from longdraft.pipeline.actors import controller_actor, producer_actor, shard_owners_actor, trainer_actor
    from longdraft.pipeline.placement import place, release

    t, c = cfg.training, cfg.cluster
    tokenizer = load_tokenizer(cfg)
    held_out, held_out_report = load_held_out(cfg, tokenizer)
    state = checkpoint_extra(checkpoint) if checkpoint is not None else None
    start_step, start_position = (state["step"], state["stream_position"]) if state else (0, 0)
    vocab = vocab_for(cfg, tokenizer)
    sizes = sample_sizes(cfg)
    started_ray = start_ray(cfg)
    placement, store, actors = None, None, []
    try:
        placement = place(cfg, actor_cpus(cfg))
        owners = shard_owners_actor().remote()  # an owner per producer node: shards outlive a dead producer
        actors.append(owners)
        store = StoreService(cfg, owners, sizes)
        world, dp, sp = t.num_trainers, cfg.dp_size, cfg.sp_size
        queues = [
            [Queue(maxsize=2 * t.batch_size, actor_options={"num_cpus": 0}) for _ in range(sp)] for _ in range(dp)
        ]
        run_key = uuid.uuid4().hex[:8]
        producers = [
            producer_actor(placement.producer_options()).remote(i, cfg, store.producer_factory(), run_key)
            for i in range(cfg.inference.num_producers)
        ]
        controller = controller_actor().remote(
            FeedSpec(cfg, start_step, start_position),
            producers,
            queues,
            t.batch_size,
            pool_size=max(2 * t.batch_size, cfg.inference.batch_size),
            producer_batch=cfg.inference.batch_size,
            held_out=_held_out(cfg, held_out),
            budget=inflight_budget(cfg, store.capacity_bytes),
            sizes=sizes,
        )
        tau_actor = _tau_evaluator(cfg, placement)
        actors += [tau_actor] if tau_actor is not None else []
        trainers = [
            trainer_actor(placement.trainer_options[rank]).remote(
                rank,
                world,
                cfg,
                queues[rank // sp][rank % sp],
                controller,
                store.trainer_factory(),
                vocab.draft_to_target,
                start_position,
                str(checkpoint) if checkpoint else None,
                tau_actor if rank == 0 else None,
            )
            for rank in range(world)
        ]
        actors += [*producers, controller, *trainers]
        check_shared_output(cfg, trainers, run_key, lambda futures: _wait_all(futures, actors, c.placement_timeout_s))
        init_method = _wait_all(
            {trainers[0].rendezvous_address.remote(): "trainer rank 0 (rendezvous)"}, actors, c.placement_timeout_s
        )["trainer rank 0 (rendezvous)"]
        sees_cuda = _wait_all(
            {trainer.sees_cuda.remote(): r for r, trainer in enumerate(trainers)}, actors, c.placement_timeout_s
        )
        device = trainer_device(placement.use_gpu, [sees_cuda[r] for r in range(world)])
        rank_cfg = decided_for_ranks(cfg, device)  # the same device, precision, backend on every rank
        _wait_all(
            {
                trainer.setup.remote(init_method, rank_cfg): f"trainer rank {r} (setup)"
                for r, trainer in enumerate(trainers)
            },
            actors,
            c.placement_timeout_s + c.collective_timeout_s,
        )
        futures = {controller.run.remote(): "controller"}
        futures.update({trainer.train.remote(): f"trainer rank {r}" for r, trainer in enumerate(trainers)})
        started = time.monotonic()
        results = _wait_all(
            futures,
            actors,
            c.run_timeout_s,
            liveness=lambda: stalled_rank(
                ray.get(controller.progress.remote(), timeout=60), world, c.stall_timeout_s, time.monotonic() - started
            ),
        )
        summary = ray.get(controller.summary.remote())
        producer_reports = ray.get([p.report.remote() for p in producers])
        # Before the trainers close (their segments hold the pool); after a producer death, long
        # enough for the master to drop a put it left unfinished.
        keys_left = store.keys_left(wait_s=PUT_DISCARD_WAIT_S if summary["producer_failures"] else 0.0)
        ray.get([trainer.shutdown.remote() for trainer in trainers])
        ray.get([p.close.remote() for p in producers], timeout=120)
        loop: LoopResult = results["trainer rank 0"]["loop"]
        print(summary["stream"])
        bad_rows, data = summary.pop("bad_rows"), [summary.pop("stream")]
        data += [held_out_report.summary()] if held_out_report else []
        summary.update(
            producers=producer_reports,
            keys_left=keys_left,
            ranks=[results[f"trainer rank {r}"]["report"] for r in range(world)],
        )
        summary = write_summary(cfg, loop, bad_rows, data, summary)
        if summary["lost"] or summary["duplicated"]:
            raise RuntimeError(
                f"{summary['lost']} samples were lost and {summary['duplicated']} trained twice between "
                f"producers and trainers: {summary}"
            )
        return loop
    finally:
        _stop(actors)
        if placement is not None:
            release(placement)
        if store is not None:
            store.close()
        if started_ray:
            ray.shutdown()
