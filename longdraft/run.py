"""``longdraft train``: one device or the Ray pipeline, then the loop, then evaluation and plot.

The data flow is one direction: cli -> run -> (local | pipeline) -> train loop. Nothing below
imports this module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from longdraft.config import Config, save_config
from longdraft.device import resolve_device
from longdraft.preflight import preflight
from longdraft.train.checkpoint import latest_checkpoint
from longdraft.train.loop import LoopResult


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    steps: int
    last_metrics: dict
    last_eval: dict | None


def run_training(cfg: Config) -> TrainResult:
    """Train as configured: ``training.num_trainers > 1`` runs the sharded pipeline on Ray."""
    from longdraft.train.setup import check_training_length

    out = Path(cfg.output.shared_dir)  # rank 0's checkpoints, export and metrics
    check_training_length(cfg)
    if (
        cfg.eval.enabled or cfg.eval.every
    ) and cfg.eval.context_lengths:  # refused now, not after the training it follows
        from longdraft.eval.after_training import check_context_eval

        check_context_eval(cfg)
    preflight(cfg)  # mistakes found before anything starts (longdraft/preflight.py)
    save_config(cfg)  # <output.dir>/config.yaml
    checkpoint = latest_checkpoint(out) if cfg.training.resume else None
    if cfg.training.num_trainers > 1:
        from longdraft.pipeline.launch import run_pipeline  # Ray is only needed for multi-rank runs

        loop = run_pipeline(cfg, checkpoint)
    else:
        loop = _run_local(cfg, checkpoint)
    result = TrainResult(
        out, loop.final_dir, cfg.training.num_steps, loop.history[-1] if loop.history else {}, loop.last_eval
    )
    return finish_run(cfg, result)


def _run_local(cfg: Config, checkpoint: Path | None) -> LoopResult:
    from longdraft.attention.factory import make_attention_backend
    from longdraft.engines.factory import build_engine
    from longdraft.parallel.reduction import SumReducer
    from longdraft.step_meter import StepMeter
    from longdraft.train.checkpoint import checkpoint_extra
    from longdraft.train.local_source import LocalSource
    from longdraft.train.loop import train_loop
    from longdraft.train.rank_context import RankContext
    from longdraft.train.setup import build_train_parts, load_held_out, load_tokenizer, training_stream, vocab_for
    from longdraft.train.summary import write_summary

    t = cfg.training
    torch.manual_seed(t.seed)
    tokenizer = load_tokenizer(cfg)
    held_out, held_out_report = load_held_out(cfg, tokenizer)
    stream = training_stream(cfg, tokenizer, checkpoint_extra(checkpoint)["stream_position"] if checkpoint else 0)
    device = resolve_device(t.device)
    engine = build_engine(cfg, device)
    parts = build_train_parts(cfg, vocab_for(cfg, tokenizer), device)
    meter = StepMeter.for_device(device)
    rank = RankContext(
        LocalSource(cfg, stream, held_out, engine, device),
        make_attention_backend(cfg.attention_backend, meter=meter, window=cfg.model.draft_window),
        SumReducer(None),
        device,
        meter,
        tau=_inline_tau(cfg, device, engine),
    )
    try:
        loop = train_loop(cfg, parts, rank, checkpoint)
    finally:
        stream.close()  # its tokenizer pool, if any
    reports = [r for r in (stream.report, held_out_report) if r is not None]
    for report in reports:
        print(report.summary())
    data = [r.summary() for r in reports]
    write_summary(cfg, loop, dict(stream.report.skipped), data, {"epochs_started": stream.epoch + 1})
    return loop


def _inline_tau(cfg: Config, device: torch.device, engine):
    """One device's real τ by context length between steps (``eval.every``), or None. It decodes with
    the HF engine's target when there is one: a second copy would double the target's memory."""
    if not cfg.eval.every:
        return None
    from longdraft.engines.hf import HFTargetEngine
    from longdraft.eval.context_tau import ContextTauMeter
    from longdraft.train.tau_during_training import InlineTau

    shared = engine.model if isinstance(engine, HFTargetEngine) else None
    return InlineTau(ContextTauMeter(cfg, device, shared))


def finish_run(cfg: Config, result: TrainResult) -> TrainResult:
    """Speculative-decoding evaluation of the export, then the training plot (which shows its tau).

    Training is done by now: a missing plotting library costs the picture, never the run."""
    if cfg.eval.enabled:
        from longdraft.eval.after_training import final_evaluation

        final_evaluation(cfg, result)
    if cfg.output.plot:
        from longdraft.train.plot import PlotUnavailable, plot_metrics

        try:
            print(f"plot: {plot_metrics(result.output_dir)}")
        except PlotUnavailable as exc:
            print(f"warning: no metrics.png: {exc}; everything else was written", file=sys.stderr)
    return result
