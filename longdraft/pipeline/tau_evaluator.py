"""Real τ by context length during a pipeline run: an evaluator actor that holds the target (the HF
engine, whatever the producers use: `eval/context_tau.py` decodes with the HF target runner), and
trainer rank 0's side of it, `ActorTau`.

Rank 0 puts the draft (the export in memory, `exported_state`) into the object store and asks the
actor to measure it; the answer comes back while training goes on and joins the record of the step
at which it arrives, naming its own step (``tau_step``). At most one evaluation is in flight: a
step that is due while one still runs is skipped and counted (``tau_skipped``). The last step waits
for its own result. An evaluator that dies or fails is reported (a console line and
``tau_evaluator_failed``: the step it was measuring) and training goes on without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from longdraft.config import Config
from longdraft.train.tau_during_training import describe


class TauEvaluator:
    """The actor: loads the target and the prompts once, then measures every draft it is sent."""

    def __init__(self, cfg: Config):
        from longdraft.device import placed_device
        from longdraft.eval.context_tau import ContextTauMeter

        torch.set_num_threads(1)
        self.meter = ContextTauMeter(cfg, placed_device(cfg.training.device))

    def measure(self, step: int, exported: dict) -> dict:
        return {"tau_step": step, **self.meter.measure(exported)}


def tau_evaluator_actor(options: dict):
    import ray

    return ray.remote(TauEvaluator).options(**options)


class ActorTau:
    """Rank 0's side: ``wait_s`` bounds the wait for the last step's result."""

    def __init__(self, actor, wait_s: float):
        self.actor, self.wait_s = actor, wait_s
        self.pending = None  # (step, object ref) of the evaluation in flight
        self.skipped = 0
        self.failed = False

    def step(self, step: int, due: bool, last: bool, export: Callable[[], dict]) -> list[dict]:
        import ray

        arrived = [self._collect(wait=last)]  # the last step's own evaluation starts only after the one in flight
        if due and not self.failed:
            if self.pending is not None:
                self.skipped += 1
            else:
                self.pending = (step, self.actor.measure.remote(step, ray.put(export())))
        if last:
            arrived.append(self._collect(wait=True))
        arrived = [r for r in arrived if r]
        if self.skipped:
            arrived = arrived or [{}]
            arrived[-1]["tau_skipped"] = self.skipped
        return arrived

    def _collect(self, wait: bool) -> dict:
        import ray

        if self.pending is None:
            return {}
        step, ref = self.pending
        ready, _ = ray.wait([ref], timeout=self.wait_s if wait else 0)
        if not ready:
            return self._fail(step, f"no answer within {self.wait_s:.0f} s") if wait else {}
        self.pending = None
        try:
            result = ray.get(ref)
        except Exception as exc:  # the actor died, or its evaluation raised
            cause = getattr(exc, "cause", None) or exc
            return self._fail(step, f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
        print(describe(result), flush=True)
        return result

    def _fail(self, step: int, reason: str) -> dict:
        self.failed, self.pending = True, None
        print(
            f"warning: the τ evaluator failed measuring step {step} ({reason}); training goes on without it",
            file=sys.stderr,
            flush=True,
        )
        return {"tau_evaluator_failed": step}
