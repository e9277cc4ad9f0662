"""Packed micro-batches through the Ray pipeline (``training.tokens_per_micro_batch``): a packed run
equals the unpacked run step for step, on DP = 2 (micro-batches balanced by tokens over the
replicas, a replica with none in a step included) and on SP = 2 layouts (Ulysses; ring, where the
documents of a micro-batch are ordered to even the ring ranks' work), and through a producer death.

Real Ray actors, gloo groups and the Ray store; the tiny target of ``test_pipeline.py``.
"""

import json

import pytest

from longdraft.pipeline.launch import run_pipeline
from longdraft.testing.tiny_target import build_tiny_target, tiny_rows, write_tiny_jsonl
from longdraft.train.metrics_log import read_metrics
from tests.pipeline.test_pipeline import _config

STEPS = 4
BUDGET = 64  # tokens per packed micro-batch; samples are 2 to 40 tokens (max_seq_length)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """Long and short samples, one without loss tokens (skipped by packing as unpacked)."""
    root = tmp_path_factory.mktemp("packed")
    build_tiny_target(root / "target", initializer_range=0.3, seed=2)
    rows = tiny_rows(num_conversations=8, num_texts=2, seed=3)
    short = [{"text": "word " * n} for n in (1, 3, 6, 2, 9, 4)]
    rows = [row for pair in zip(rows, short + rows[len(short) :]) for row in pair][: 4 * STEPS]
    rows.insert(2, {"conversations": [{"role": "user", "content": "only a question here"}]})
    write_tiny_jsonl(root / "train.jsonl", rows)
    return root


def _run(root, out, dp, u, r, **training):
    cfg = _config(root, out, dp, u, r, "ray", num_steps=STEPS, **training)
    run_pipeline(cfg, None)
    return read_metrics(out), json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def unpacked(ray_session, mixed_dir, tmp_path_factory):
    return _run(mixed_dir, tmp_path_factory.mktemp("unpacked") / "run", 1, 1, 1)


def _assert_same_steps(got, want):
    assert len(got) == len(want) == STEPS
    for g, w in zip(got, want):
        assert abs(g["loss"] - w["loss"]) <= 1e-5 * abs(w["loss"]), (g["step"], g["loss"], w["loss"])
        assert g["loss_k"] == pytest.approx(w["loss_k"], rel=1e-5)
        assert g["acc_k"] == pytest.approx(w["acc_k"], rel=1e-5, abs=1e-7)
        assert g["count_k"] == w["count_k"] and g["samples"] == w["samples"]
        assert g["samples_skipped"] == w["samples_skipped"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dp,u,r", [(2, 1, 1), (1, 2, 1), (1, 1, 2)])
def test_packed_run_equals_the_unpacked_run(ray_session, mixed_dir, tmp_path, unpacked, dp, u, r):
    want, want_summary = unpacked
    got, summary = _run(mixed_dir, tmp_path / "packed", dp, u, r, tokens_per_micro_batch=BUDGET)
    _assert_same_steps(got, want)
    assert summary["lost"] == 0 and summary["duplicated"] == 0
    assert summary["trained"] == want_summary["trained"]
    assert summary["skipped_by_reason"] == want_summary["skipped_by_reason"] != {}
    # Fewer micro-batches than samples: documents shared them; on DP = 2, fewer than two per step:
    # in some step one replica trained none.
    assert summary["packed_steps"] == STEPS and summary["packed_micro_batches"] < summary["trained"]
    assert dp == 1 or summary["packed_micro_batches"] < dp * STEPS
    ranks = [json.loads((tmp_path / "packed" / "ranks" / f"rank{n}.json").read_text()) for n in range(dp * u * r)]
    assert sum(rank["samples_read"] for rank in ranks) == summary["packed_micro_batches"] * u * r
    worst = max(abs(g["loss"] - w["loss"]) / abs(w["loss"]) for g, w in zip(got, want))
    print({k: summary[k] for k in ("packed_micro_batches", "trained", "replica_token_excess")}, f"loss rel {worst:.1e}")


@pytest.mark.timeout(420)
def test_a_packed_micro_batch_whose_producer_died_is_issued_again(ray_session, mixed_dir, tmp_path):
    """A producer killed mid-run: its packed micro-batches go again under new keys, nothing is lost or
    trained twice, and the run still equals the unpacked one-device run."""
    import os
    import signal
    import threading

    from longdraft.run import run_training
    from tests.pipeline.test_pipeline import _assert_steps_equal, _producer_pids, _wait_for_steps

    steps = 12  # the stream outlasts what the pool and queues buffer, so the producer is still busy
    run_training(_config(mixed_dir, tmp_path / "local", 1, 1, 1, "ray", num_steps=steps))
    cfg = _config(mixed_dir, tmp_path / "kill", 1, 2, 1, "ray", num_steps=steps, tokens_per_micro_batch=BUDGET)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(loop=run_pipeline(cfg, None)), daemon=True)
    runner.start()
    _wait_for_steps(tmp_path / "kill", 2, runner)
    (victim,) = _producer_pids()
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=300)
    assert "loop" in outcome, "the run did not finish"
    summary = json.loads((tmp_path / "kill" / "summary.json").read_text())
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["trained"] + summary["skipped"] == steps * 4
    assert victim not in _producer_pids() and 0 < summary["producers"][0]["samples"] < summary["trained"]
    _assert_steps_equal(
        read_metrics(tmp_path / "kill"), read_metrics(tmp_path / "local"), 1e-5, ("loss", "loss_k", "acc_k", "count_k")
    )
    print({k: summary[k] for k in ("producer_failures", "reissued", "lost", "duplicated")})


@pytest.mark.timeout(420)
def test_packed_run_evaluates_and_resumes_exactly(ray_session, mixed_dir, tmp_path):
    """Held-out samples (unpacked) before the packed steps, and a packed DP = 2 run resumed from its
    step-2 checkpoint continues exactly like the uninterrupted run (each step's end carries the
    stream position)."""
    import shutil

    from longdraft.run import run_training
    from longdraft.train.checkpoint import latest_checkpoint
    from tests.pipeline.test_pipeline import _assert_steps_equal

    write_tiny_jsonl(mixed_dir / "eval.jsonl", num_conversations=3, num_texts=1, seed=7)
    cfg = _config(
        mixed_dir, tmp_path / "run", 2, 1, 1, "ray", num_steps=STEPS, tokens_per_micro_batch=BUDGET, eval_every=2
    )
    cfg.training.save_every = 2
    cfg.data.eval_path = str(mixed_dir / "eval.jsonl")
    run_training(cfg)
    whole = read_metrics(tmp_path / "run")
    assert "eval_loss" in whole[1] and "eval_loss" in whole[3]

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step_4")
    shutil.rmtree(resumed_dir / "final")
    assert latest_checkpoint(resumed_dir).name == "step_2"
    cfg.output.dir, cfg.training.resume = str(resumed_dir), True
    run_training(cfg)
    keys = ("loss", "loss_k", "acc_k", "grad_norm", "count_k", "samples", "eval_loss")
    _assert_steps_equal(read_metrics(resumed_dir)[2:], whole[2:], 1e-6, keys[:-1])
    _assert_steps_equal([read_metrics(resumed_dir)[3]], [whole[3]], 1e-6, keys[-1:])
