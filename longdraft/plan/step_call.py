"""The one place the plan calls the training step (keep it the only one: the step's signature moves)."""

from __future__ import annotations

from longdraft.plan.parts import PlanParts
from longdraft.train.step import train_step


def run_train_step(parts: PlanParts, on_copy=None) -> dict:
    """One optimizer step of this rank's micro-batches: ``train/step.py``'s ``train_step``, unchanged."""
    return train_step(
        parts.model,
        parts.step_batches(on_copy),
        parts.backend,
        parts.head,
        parts.optimizer,
        parts.scheduler,
        parts.settings,
        parts.reducer,
    )
