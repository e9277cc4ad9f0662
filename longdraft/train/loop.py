"""The one training loop: any batch source, any layout (one device or a rank of DP x U x R).

Per step: read the step's micro-batches, ``train_step`` (loss normalised by the global count,
gradients summed over all ranks), metrics reduced as sums over ranks, held-out evaluation every
``training.eval_every`` steps, checkpoints every ``training.save_every`` steps, and at the end the
export. Rank 0 (the only rank on one device) writes the metrics, checkpoints and export.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from longdraft.attention.comm_stats import CommStats
from longdraft.attention.factory import AttentionBackend
from longdraft.config import Config
from longdraft.phase_times import PhaseTimes
from longdraft.train.batch_source import SKIP_TOO_FEW_LOSS_TOKENS, BatchSource
from longdraft.train.checkpoint import load_checkpoint, save_checkpoint
from longdraft.train.export import export_config_dict, export_draft
from longdraft.train.metrics_log import MetricsLog, peak_memory
from longdraft.train.reduction import SumReducer
from longdraft.train.setup import TrainParts
from longdraft.train.step import StepSettings, evaluate, train_step


@dataclass
class LoopResult:
    history: list[dict]  # every step's metrics, as rank 0 logs them
    last_eval: dict | None
    skipped: Counter  # reason -> samples skipped during training (whole run, resumed part included)
    final_dir: Path | None  # the export (rank 0 only)
    data_wait_s: float
    step_s: float
    rank_peak_mem_bytes: list[int]  # this rank's own peak of every step (the history holds the max over ranks)
    rank_time_s: list[dict]  # this rank's own phase times of every step (the history holds rank 0's)


def _due(step: int, every: int, last: int) -> bool:
    return step == last or bool(every and step % every == 0)


def train_loop(
    cfg: Config,
    parts: TrainParts,
    source: BatchSource,
    backend: AttentionBackend,
    reducer: SumReducer,
    *,
    rank: int = 0,
    sp_size: int = 1,
    checkpoint: Path | None = None,
    progress_bar: bool = True,
    on_step: Callable[[int], None] | None = None,
    comm_stats: CommStats | None = None,
    phase_times: PhaseTimes | None = None,
) -> LoopResult:
    """``on_step(step)`` is called after every finished step (a pipeline rank's liveness report);
    ``comm_stats`` and ``phase_times`` (the attention backend's) add each step's communication bytes
    and waits, and its attention and loss time."""
    t, out, is_root = cfg.training, Path(cfg.output.checkpoint_dir or cfg.output.dir), rank == 0
    device = parts.target_head.device
    settings = StepSettings.from_config(cfg, device)
    start_step, elapsed_before, skipped = 0, 0.0, Counter()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, parts.model, parts.optimizer, parts.scheduler)
        start_step, elapsed_before = state["step"], state["elapsed_s"]
        skipped.update(state["skipped"])
        source.resume_at(state["stream_position"])
        if is_root:
            print(
                f"resumed from {checkpoint} (step {start_step}, row {state['stream_position']} of the stream)",
                flush=True,
            )
    log = (
        MetricsLog(out, resume_after_step=start_step if checkpoint else None, tensorboard=t.tensorboard)
        if is_root
        else None
    )
    eval_batches = source.eval_batches()  # before the first step: the same on every rank
    started = time.perf_counter() - elapsed_before
    history, last_eval, data_wait_s, busy_s, own_peaks, own_times = [], None, 0.0, 0.0, [], []
    steps = range(start_step, t.num_steps)
    bar = (
        tqdm(steps, initial=start_step, total=t.num_steps, desc="train", unit="step")
        if is_root and progress_bar
        else None
    )
    try:
        for step in steps:
            data = source.next_step()
            data_wait_s += data.data_wait_s
            step_start = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if comm_stats is not None:
                comm_stats.reset()
            if phase_times is not None:
                phase_times.reset()
            metrics = train_step(
                parts.model,
                data.batches,
                backend,
                parts.target_head,
                parts.optimizer,
                parts.scheduler,
                settings,
                reducer,
                phase_times,
            )
            own_times.append(dict(metrics["time_s"], data_wait_s=data.data_wait_s))
            step_s = time.perf_counter() - step_start
            busy_s += step_s
            mem, mem_kind = peak_memory(device)
            own_peaks.append(mem)
            tokens = sum(b.query_tokens() for b in data.batches)
            totals = reducer.sum_(torch.tensor([data.samples, data.skipped, tokens], dtype=torch.float64))
            peak = reducer.max_(torch.tensor([mem], dtype=torch.float64))
            # Every SP rank counts the sample once and its own shard's tokens.
            samples, skipped_now = int(totals[0]) // sp_size, int(totals[1]) // sp_size
            skipped[SKIP_TOO_FEW_LOSS_TOKENS] += skipped_now
            metrics.update(
                step=step + 1,
                samples=samples,
                samples_skipped=skipped_now,
                tokens=int(totals[2]),
                tokens_per_s=int(totals[2]) / step_s,
                data_wait_s=data.data_wait_s,
                elapsed_s=time.perf_counter() - started,
                peak_mem_bytes=int(peak[0]),
                peak_mem_kind=mem_kind,
                epoch=source.epoch,
            )
            if comm_stats is not None:  # rank 0's own view: its sends and its waits, per collective kind
                metrics.update(comm_bytes=dict(comm_stats.bytes), comm_wait_s=dict(comm_stats.seconds))
            if cfg.evaluates_during_training and _due(step + 1, t.eval_every, t.num_steps):
                last_eval = evaluate(parts.model, eval_batches, backend, parts.target_head, settings, reducer)
                metrics.update({f"eval_{k}": v for k, v in last_eval.items()})
            history.append(metrics)
            if on_step is not None:
                on_step(step + 1)
            if not is_root:
                continue
            log.write(metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{metrics['loss']:.3f}",
                    acc0=f"{metrics['acc_k'][0]:.3f}",
                    tok_s=f"{metrics['tokens_per_s']:.0f}",
                )
            elif _due(step + 1, t.log_every, t.num_steps):  # a rank actor's output reaches the driver as lines
                print(
                    f"step {step + 1}/{t.num_steps} loss {metrics['loss']:.3f} acc0 {metrics['acc_k'][0]:.3f} "
                    f"{metrics['tokens_per_s']:.0f} tok/s",
                    flush=True,
                )
            if _due(step + 1, t.save_every, t.num_steps):
                extra = {
                    "stream_position": source.stream_position,
                    "elapsed_s": metrics["elapsed_s"],
                    "skipped": dict(skipped),
                    "draft_config": export_config_dict(parts.model.config, torch.float32),
                }
                save_checkpoint(out, step + 1, parts.model, parts.optimizer, parts.scheduler, extra)
        source.finish()
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    final_dir = export_draft(parts.model, out / "final", trained_length=t.max_seq_length) if is_root else None
    return LoopResult(history, last_eval, skipped, final_dir, data_wait_s, busy_s, own_peaks, own_times)
