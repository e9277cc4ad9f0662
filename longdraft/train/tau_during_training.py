"""Real τ by context length while training (``eval.every``): what the loop's writer calls after each
step. ``step`` returns the results that arrived: ``tau@L`` (and its counts) with ``tau_step``, the
step whose weights they measured, and ``eval_tau_s``, the evaluation's own time. The loop adds the
last of them to that step's record and writes any earlier one (an evaluation still in flight when
the last step came) as a record of its own, so none is lost.

One device measures in place, between steps (`InlineTau`); a pipeline's rank 0 hands the weights to
an evaluator actor (`pipeline/tau_evaluator.py`), whose results arrive with a later step's record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class TauDuringTraining(Protocol):
    def step(self, step: int, due: bool, last: bool, export: Callable[[], dict]) -> list[dict]:
        """After optimizer step ``step``: measure ``export()`` (the draft as `exported_state` gives it)
        when ``due``; at the ``last`` step, return only once its own result is in."""
        ...


def describe(result: dict) -> str:
    """``τ at step 4: 2.10 @64, 1.85 @256 (1.2 s)``: one console line of a result."""
    taus = [f"{v:.2f} @{k.removeprefix('tau@')}" for k, v in result.items() if k.startswith("tau@") and v is not None]
    return f"τ at step {result['tau_step']}: {', '.join(taus)} ({result['eval_tau_s']:.1f} s)"


class InlineTau:
    """One device: the meter (`eval/context_tau.py`) runs between steps, on the training device."""

    def __init__(self, meter):
        self.meter = meter

    def step(self, step: int, due: bool, last: bool, export: Callable[[], dict]) -> list[dict]:
        if not due:
            return []
        return [{"tau_step": step, **self.meter.measure(export())}]
