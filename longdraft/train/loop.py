"""The one training loop: any batch source, any layout (one device or a rank of DP x U x R).

Per step: read the step's micro-batches, ``train_step`` (loss normalised by the global count,
gradients summed over all ranks), metrics reduced as sums over ranks, then whatever says it is due:
held-out evaluation, real τ by context length (``rank.tau``), the metrics log, a checkpoint. At the end the export. Rank 0 (the only rank
on one device) writes the metrics, checkpoints and export.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longdraft.config import Config
from longdraft.train.batch_source import SKIP_TOO_FEW_LOSS_TOKENS, StepBatches
from longdraft.train.export import export_draft, exported_state
from longdraft.train.metrics_log import Console, MetricsLog, peak_memory
from longdraft.train.periodic import Checkpointer, Evaluator, due
from longdraft.train.rank_context import RankContext
from longdraft.train.setup import TrainParts
from longdraft.train.step import StepSettings, train_step


@dataclass
class LoopResult:
    history: list[dict] = field(default_factory=list)  # every step's metrics, as rank 0 logs them
    last_eval: dict | None = None
    skipped: Counter = field(default_factory=Counter)  # reason -> samples skipped (resumed part included)
    final_dir: Path | None = None  # the export (rank 0 only)
    data_wait_s: float = 0.0
    step_s: float = 0.0
    rank_peak_mem_bytes: list[int] = field(default_factory=list)  # this rank's own peaks (history: the max)
    rank_time_s: list[dict] = field(default_factory=list)  # this rank's own phase times (history: rank 0's)


def train_loop(cfg: Config, parts: TrainParts, rank: RankContext, checkpoint: Path | None = None) -> LoopResult:
    """Train ``training.num_steps`` steps (from ``checkpoint``'s on, when given) as ``rank``."""
    t = cfg.training
    settings = StepSettings.from_config(cfg, rank.device)
    saver = Checkpointer(cfg, parts, rank.is_writer)
    resumed = saver.resume(checkpoint, rank.source)
    evaluator = Evaluator(cfg, parts, rank, settings)  # before the first step: the same on every rank
    log = None
    if rank.is_writer:
        console = Console(rank.progress_bar, resumed.step, t.num_steps, t.log_every)
        log = MetricsLog(cfg.output.shared_dir, resumed.step if checkpoint else None, t.tensorboard, console)
    result = LoopResult(skipped=resumed.skipped)
    started = time.perf_counter() - resumed.elapsed_s
    try:
        for step in range(resumed.step + 1, t.num_steps + 1):
            data = rank.source.next_step()
            metrics = _train_and_reduce(parts, rank, settings, data, result)
            metrics.update(step=step, elapsed_s=time.perf_counter() - started, epoch=rank.source.epoch)
            if evaluator.due(step):
                metrics.update(evaluator.run())
            if rank.tau is not None:  # real τ by context length, timed apart from the step (eval_tau_s)
                tau_due = due(step, cfg.eval.every, t.num_steps)
                arrived = rank.tau.step(step, tau_due, step == t.num_steps, lambda: exported_state(parts.model))
                for earlier in arrived[:-1]:  # in flight when the last step came: a record of its own
                    if log is not None:
                        log.write({"step": step, **earlier}, show=False)
                metrics.update(arrived[-1] if arrived else {})
            result.history.append(metrics)
            if rank.on_step is not None:
                rank.on_step(step)
            if log is not None:
                log.write(metrics)
            if saver.due(step):
                saver.save(step, rank.source, metrics["elapsed_s"], result.skipped)
        rank.source.finish()
    finally:
        if log is not None:
            log.close()
    result.last_eval = evaluator.last
    if rank.is_writer:
        result.final_dir = export_draft(
            parts.model, Path(cfg.output.shared_dir) / "final", trained_length=t.max_seq_length
        )
    return result


def _train_and_reduce(
    parts: TrainParts, rank: RankContext, settings: StepSettings, data: StepBatches, result: LoopResult
) -> dict:
    """One step, its metrics summed (samples, tokens) or maxed (peak memory) over ranks; this rank's
    own times and peak go to ``result``."""
    if rank.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rank.device)
    start = time.perf_counter()
    p = parts
    metrics = train_step(
        p.model, data.batches, rank.backend, p.target_head, p.optimizer, p.scheduler, settings, rank.reducer, rank.meter
    )
    step_s = time.perf_counter() - start
    mem, mem_kind = peak_memory(rank.device)
    result.step_s += step_s
    result.data_wait_s += data.data_wait_s
    result.rank_peak_mem_bytes.append(mem)
    result.rank_time_s.append(dict(metrics["time_s"], data_wait_s=data.data_wait_s))
    tokens = data.query_tokens()
    samples, skipped, tokens = map(int, rank.reducer.sum_numbers([data.samples, data.skipped, tokens]))
    (peak,) = rank.reducer.max_numbers([mem])
    # Every SP rank counts the sample once and its own shard's tokens.
    samples, skipped = samples // rank.sp_size, skipped // rank.sp_size
    result.skipped[SKIP_TOO_FEW_LOSS_TOKENS] += skipped
    metrics.update(
        samples=samples,
        samples_skipped=skipped,
        tokens=tokens,
        tokens_per_s=tokens / step_s,
        data_wait_s=data.data_wait_s,
        peak_mem_bytes=int(peak),
        peak_mem_kind=mem_kind,
    )
    return metrics
