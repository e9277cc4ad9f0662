"""The loop's periodic duties, each saying itself when it is due: checkpoints and held-out evaluation.

Due steps come from the config alone (every ``N`` steps and the last), so every rank agrees
(ARCHITECTURE.md, invariant 4).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longdraft.config import Config
from longdraft.train.batch_source import BatchSource
from longdraft.train.checkpoint import load_checkpoint, save_checkpoint
from longdraft.train.export import export_config_dict
from longdraft.train.rank_context import RankContext
from longdraft.train.setup import TrainParts
from longdraft.train.step import StepSettings, evaluate


def due(step: int, every: int, last: int) -> bool:
    """``step`` (1-based) is a multiple of ``every`` (0: never) or the last step."""
    return step == last or bool(every and step % every == 0)


@dataclass
class Resumed:
    step: int = 0  # steps already done
    elapsed_s: float = 0.0
    skipped: Counter = field(default_factory=Counter)  # reason -> samples skipped so far


class Checkpointer:
    """Every ``training.save_every`` steps and at the last, the writer saves model, optimizer,
    schedule and where the stream stands; ``resume`` restores them on every rank."""

    def __init__(self, cfg: Config, parts: TrainParts, is_writer: bool):
        self.cfg, self.parts, self.is_writer = cfg, parts, is_writer

    def resume(self, checkpoint: Path | None, source: BatchSource) -> Resumed:
        if checkpoint is None:
            return Resumed()
        state = load_checkpoint(checkpoint, self.parts.model, self.parts.optimizer, self.parts.scheduler)
        source.resume_at(state["stream_position"])
        if self.is_writer:
            print(
                f"resumed from {checkpoint} (step {state['step']}, row {state['stream_position']} of the stream)",
                flush=True,
            )
        return Resumed(state["step"], state["elapsed_s"], Counter(state["skipped"]))

    def due(self, step: int) -> bool:
        t = self.cfg.training
        return self.is_writer and due(step, t.save_every, t.num_steps)

    def save(self, step: int, source: BatchSource, elapsed_s: float, skipped: Counter) -> None:
        extra = {
            "stream_position": source.stream_position,
            "elapsed_s": elapsed_s,
            "skipped": dict(skipped),
            "draft_config": export_config_dict(self.parts.model.config, torch.float32),
        }
        save_checkpoint(
            self.cfg.output.shared_dir, step, self.parts.model, self.parts.optimizer, self.parts.scheduler, extra
        )


class Evaluator:
    """Held-out loss and accuracy every ``training.eval_every`` steps and at the last (all ranks
    together: the sums are reduced). The held-out batches are read once, before the first step."""

    def __init__(self, cfg: Config, parts: TrainParts, rank: RankContext, settings: StepSettings):
        self.cfg, self.parts, self.rank, self.settings = cfg, parts, rank, settings
        self.batches = rank.source.eval_batches()  # the same on every rank
        self.last: dict | None = None

    def due(self, step: int) -> bool:
        t = self.cfg.training
        return self.cfg.evaluates_during_training and due(step, t.eval_every, t.num_steps)

    def run(self) -> dict:
        p, r = self.parts, self.rank
        self.last = evaluate(p.model, self.batches, r.backend, p.target_head, self.settings, r.reducer)
        return {f"eval_{k}": v for k, v in self.last.items()}
