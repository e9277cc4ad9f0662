"""Single-process training loop: target prefill on the fly, TTT steps, checkpoints, export.

This is the one-device path (CPU or one GPU). The sharded multi-rank path reuses ``train_step``
with a USP backend and per-rank shards (``longdraft.pipeline``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from longdraft.config import Config, save_config
from longdraft.data.dataset import Sample
from longdraft.data.loss_mask import unpack_loss_mask
from longdraft.model.attention_backend import local_backend
from longdraft.model.ttt import ShardBatch
from longdraft.target.engine import TargetEngine
from longdraft.train.batching import collate_full_sequences
from longdraft.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from longdraft.train.export import export_config_dict, export_draft
from longdraft.train.metrics_log import MetricsLog, peak_memory
from longdraft.train.optim import build_optimizer, build_scheduler
from longdraft.train.reduction import SumReducer
from longdraft.train.sample_order import SampleOrder
from longdraft.shard import should_skip
from longdraft.train.setup import build_draft, load_data, load_engine, load_tokenizer, vocab_for
from longdraft.train.step import StepSettings, evaluate, train_step


def full_sequence_batch(samples: list[Sample], engine: TargetEngine, ttt_length: int, device) -> ShardBatch:
    """Prefill the target on ``samples`` and collate them as one single-device micro-batch."""
    features = engine.prefill([s.input_ids for s in samples])
    return collate_full_sequences(
        [torch.tensor(s.input_ids) for s in samples],
        [unpack_loss_mask(s.packed_loss_mask, s.length).bool() for s in samples],
        [f.aux_hidden.float() for f in features],
        [f.last_hidden.float() for f in features],
        ttt_length,
    ).to(device)


def step_settings(cfg: Config) -> StepSettings:
    t = cfg.training
    return StepSettings(t.ttt_length, t.loss_chunk_size, t.activation_checkpointing, t.max_grad_norm, t.precision)


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    steps: int
    last_metrics: dict
    last_eval: dict | None


def run_training(cfg: Config) -> TrainResult:
    t = cfg.training
    if cfg.sp_size > 1 or t.num_trainers > 1:
        from longdraft.pipeline.launch import run_sharded_training  # Ray is only needed for multi-rank runs

        return run_sharded_training(cfg)
    torch.manual_seed(t.seed)
    out = Path(cfg.output.dir)
    save_config(cfg, out / "config.yaml")
    data = load_data(cfg, load_tokenizer(cfg))
    for report in data.reports:
        print(report.summary())
    engine = load_engine(cfg)
    device = engine.device
    vocab = vocab_for(cfg, data.train, engine)
    model = build_draft(engine.model.config, engine.embed_tokens_weight(), vocab, device, t.seed)
    target_head = engine.lm_head_weight().float().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, t.lr, t.weight_decay)
    scheduler = build_scheduler(optimizer, t.warmup_steps, t.num_steps, t.lr, t.min_lr)
    order = SampleOrder(len(data.train), t.seed)
    start_step, elapsed_before, skipped_in_training = 0, 0.0, Counter()
    checkpoint = latest_checkpoint(out) if t.resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        start_step, order.position, elapsed_before = state["step"], state["samples_consumed"], state["elapsed_s"]
        skipped_in_training.update(state["skipped"])
        print(f"resumed from {checkpoint} (step {start_step}, {order.position} samples consumed)")
    log = MetricsLog(out, resume_after_step=start_step if checkpoint else None, tensorboard=t.tensorboard)
    backend, settings, reducer = local_backend(t.attention_backend), step_settings(cfg), SumReducer(None)
    eval_batches = _eval_batches(cfg, data.eval, engine, device)
    started = time.perf_counter() - elapsed_before
    metrics, eval_metrics = {}, None
    bar = tqdm(range(start_step, t.num_steps), initial=start_step, total=t.num_steps, desc="train", unit="step")
    for step in bar:
        step_start = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        indices = order.take(t.batch_size)
        kept = [s for s in (data.train[i] for i in indices) if not should_skip(s.packed_loss_mask, t.min_loss_tokens, s.length)]
        skipped_in_training["too_few_loss_tokens"] += len(indices) - len(kept)
        batches = [
            full_sequence_batch(kept[j : j + t.micro_batch_size], engine, t.ttt_length, device)
            for j in range(0, len(kept), t.micro_batch_size)
        ]
        metrics = train_step(model, batches, backend, target_head, optimizer, scheduler, settings, reducer)
        step_s = time.perf_counter() - step_start
        tokens = sum(b.query_tokens() for b in batches)
        mem, mem_kind = peak_memory(device)
        metrics.update(step=step + 1, samples=len(kept), samples_skipped=len(indices) - len(kept), tokens=tokens, tokens_per_s=tokens / step_s,
                       elapsed_s=time.perf_counter() - started, peak_mem_bytes=mem, peak_mem_kind=mem_kind,
                       epoch=order.epoch)
        if eval_batches and t.eval_every and ((step + 1) % t.eval_every == 0 or step + 1 == t.num_steps):
            eval_metrics = evaluate(model, eval_batches, backend, target_head, settings, reducer)
            metrics.update({f"eval_{k}": v for k, v in eval_metrics.items()})
        log.write(metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc0=f"{metrics['acc_k'][0]:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if (t.save_every and (step + 1) % t.save_every == 0) or step + 1 == t.num_steps:
            extra = {"samples_consumed": order.position, "elapsed_s": metrics["elapsed_s"], "skipped": dict(skipped_in_training),
                     "draft_config": export_config_dict(model.config, torch.float32)}
            save_checkpoint(out, step + 1, model, optimizer, scheduler, extra)
    log.close()
    final_dir = export_draft(model, out / "final")
    summary = {
        "steps": t.num_steps, "final_loss": metrics.get("loss"), "final_acc_k": metrics.get("acc_k"),
        "eval": eval_metrics, "samples_skipped": dict(data.skipped + skipped_in_training),
        "data": [r.summary() for r in data.reports], "train_samples": len(data.train),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return finish_run(cfg, TrainResult(out, final_dir, t.num_steps, metrics, eval_metrics))


def finish_run(cfg: Config, result: TrainResult) -> TrainResult:
    """Speculative-decoding evaluation of the export, then the training plot (which shows its tau)."""
    if cfg.eval.enabled:
        from longdraft.eval.after_training import final_evaluation

        final_evaluation(cfg, result)
    if cfg.output.plot:
        from longdraft.train.plot import plot_metrics

        print(f"plot: {plot_metrics(result.output_dir)}")
    return result


def _eval_batches(cfg: Config, samples: list[Sample], engine, device) -> list[ShardBatch]:
    mb = cfg.training.micro_batch_size
    return [full_sequence_batch(samples[i : i + mb], engine, cfg.training.ttt_length, device) for i in range(0, len(samples), mb)]
