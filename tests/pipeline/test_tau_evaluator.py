"""Real τ by context length during a pipeline run: an evaluator actor gets rank 0's draft through
the object store and answers while training goes on; the last step's τ equals `longdraft eval` of
the export, and an evaluator killed mid-run is reported while training finishes."""

import json
import os
import signal
import threading
import time

import pytest

from longdraft.config import config_from_dict
from longdraft.pipeline.launch import run_pipeline
from longdraft.train.metrics_log import read_metrics
from tests.e2e.test_tau_during_training import assert_last_tau_equals_the_export, tau_config
from tests.pipeline.test_pipeline import _actor_pids

TWO_RANKS = {"num_trainers": 2, "sp_ulysses_size": 2, "micro_batch_size": 1, "batch_size": 4}


def _pipeline_config(out, steps: int, every: int):
    return config_from_dict(
        tau_config(
            out,
            training={**TWO_RANKS, "num_steps": steps},
            eval={"every": every},
            output={"plot": False},
            inference={"batch_size": 4},
            cluster={"run_timeout_s": 300},
        )
    )


@pytest.mark.timeout(420)
def test_tau_from_the_evaluator_actor_at_the_last_step_equals_the_exports_evaluation(ray_session, tmp_path):
    cfg = _pipeline_config(tmp_path / "run", steps=10, every=5)
    run_pipeline(cfg, None)
    records = assert_last_tau_equals_the_export(cfg, tmp_path / "run")
    measured = [r for r in records if "tau_step" in r]
    # each result names the step it measured (5 or 10), and joins that step's record or a later one
    assert {r["tau_step"] for r in measured} <= {5, 10} and all(r["tau_step"] <= r["step"] for r in measured)
    assert "tau_evaluator_failed" not in json.dumps(records)
    print([{k: v for k, v in r.items() if k.startswith(("tau", "eval_tau", "step"))} for r in measured])


@pytest.mark.timeout(420)
def test_a_killed_tau_evaluator_is_reported_and_training_finishes(ray_session, tmp_path):
    steps = 16
    out = tmp_path / "kill"
    cfg = _pipeline_config(out, steps=steps, every=1)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(loop=run_pipeline(cfg, None)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 240
    while not ((out / "metrics.jsonl").is_file() and len(read_metrics(out)) >= 2 and _actor_pids("TauEvaluator")):
        assert time.monotonic() < deadline and runner.is_alive(), "the run never reached step 2 with its evaluator"
        time.sleep(0.05)
    (victim,) = _actor_pids("TauEvaluator")
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=300)
    assert "loop" in outcome, "the run did not finish"
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # every step trained and logged
    failed = [r for r in records if "tau_evaluator_failed" in r]
    assert len(failed) == 1 and failed[0]["step"] > 2  # reported once, when its answer was due
    assert (out / "final" / "config.json").is_file()
    print({"failed": failed[0]["tau_evaluator_failed"], "skipped": records[-1].get("tau_skipped")})


class _SlowMeter:
    """A real actor standing in for the evaluator: answers after ``delay_s`` with what it was sent."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    def measure(self, step: int, exported: dict) -> dict:
        time.sleep(self.delay_s)
        return {"tau_step": step, "tau@8": float(exported["tensors"]["w"].sum()), "eval_tau_s": self.delay_s}


@pytest.mark.timeout(60)
def test_one_evaluation_in_flight_late_ones_skipped_and_counted_the_last_awaited(ray_session):
    import torch

    from longdraft.pipeline.tau_evaluator import ActorTau

    tau = ActorTau(ray_session.remote(_SlowMeter).remote(1.0), wait_s=30)
    export = {"config": {}, "tensors": {"w": torch.full((3,), 2.0)}}
    assert tau.step(1, due=True, last=False, export=lambda: export) == []  # sent; its answer comes later
    assert tau.step(2, due=True, last=False, export=lambda: export) == [{"tau_skipped": 1}]  # one in flight already
    export = {"config": {}, "tensors": {"w": torch.full((3,), 5.0)}}
    # The last step waits for step 1's answer, then measures its own weights: both come back, neither lost.
    assert tau.step(3, due=True, last=True, export=lambda: export) == [
        {"tau_step": 1, "tau@8": 6.0, "eval_tau_s": 1.0},
        {"tau_step": 3, "tau@8": 15.0, "eval_tau_s": 1.0, "tau_skipped": 1},
    ]
