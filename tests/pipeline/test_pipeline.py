"""The sharded pipeline end to end through Ray: every (DP, U, R) layout equals the (1,1,1) run.

Producers prefill a tiny random target and write one shard per SP rank; the controller fans
metadata out; each trainer rank reads only its own shard. Real Ray actors, gloo groups and stores.
"""

import json
import shutil
from pathlib import Path

import pytest

from longdraft.config import config_from_dict
from longdraft.pipeline.launch import run_pipeline
from longdraft.run import run_training
from longdraft.testing.tiny_target import build_tiny_target, tiny_rows, write_tiny_jsonl
from longdraft.train.checkpoint import latest_checkpoint
from longdraft.train.metrics_log import read_metrics

K = 3
LAYOUTS = [(1, 2, 1), (1, 1, 2), (2, 2, 1), (1, 2, 2)]  # (DP, U, R)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    build_tiny_target(root / "target", initializer_range=0.3, seed=2)
    rows = tiny_rows(num_conversations=12, num_texts=3, seed=3)
    # Loss tokens only at the very end: on SP > 1 every shard but the last has none.
    rows.insert(
        1, {"conversations": [{"role": "user", "content": "word " * 6}, {"role": "assistant", "content": "ok"}]}
    )
    # No loss tokens at all: every rank of the group must skip it together.
    rows.insert(2, {"conversations": [{"role": "user", "content": "only a question here"}]})
    write_tiny_jsonl(root / "train.jsonl", rows)
    write_tiny_jsonl(root / "eval.jsonl", num_conversations=3, num_texts=1, seed=7)
    return root


def _config(root, out, dp, u, r, store, run_timeout_s=240, **training):
    # No attention_backend key: "auto" must choose USP whenever a sequence spans ranks.
    return config_from_dict(
        {
            "data": {"train_path": str(root / "train.jsonl")},
            "model": {"target_path": str(root / "target"), "draft_vocab_size": 200},
            "training": {
                "max_seq_length": 40,
                "ttt_length": K,
                "batch_size": 4,
                "micro_batch_size": 1,
                "num_steps": 4,
                "lr": 3e-3,
                "seed": 0,
                "num_trainers": dp * u * r,
                "sp_ulysses_size": u,
                "sp_ring_size": r,
                "device": "cpu",
                **training,
            },
            "inference": {"batch_size": 4},
            "store": {"backend": store, "mooncake": {"global_segment_size_mb": 16, "local_buffer_size_mb": 16}},
            "output": {"dir": str(out), "plot": False},
            "cluster": {"run_timeout_s": run_timeout_s},
        }
    )


def _run(ray_session, root, tmp_path, dp, u, r, store):
    out = tmp_path / f"{store}_{dp}{u}{r}"
    run_pipeline(_config(root, out, dp, u, r, store), None)
    return out, read_metrics(out), json.loads((out / "summary.json").read_text())


def _close(a, b, rel=1e-5):
    return abs(a - b) <= rel * max(1.0, abs(b))


@pytest.fixture(scope="module")
def baseline(ray_session, data_dir, tmp_path_factory):
    return _run(ray_session, data_dir, tmp_path_factory.mktemp("base"), 1, 1, 1, "ray")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("store", ["ray", "mooncake"])
@pytest.mark.parametrize("dp,u,r", LAYOUTS)
def test_layout_equals_single_rank(ray_session, data_dir, tmp_path, baseline, dp, u, r, store):
    _, base_metrics, base_summary = baseline
    out, metrics, summary = _run(ray_session, data_dir, tmp_path, dp, u, r, store)
    assert len(metrics) == len(base_metrics) == 4
    for got, want in zip(metrics, base_metrics):
        assert _close(got["loss"], want["loss"]), (got["step"], got["loss"], want["loss"])
        assert all(_close(g, w) for g, w in zip(got["loss_k"], want["loss_k"]))
        assert got["acc_k"] == pytest.approx(want["acc_k"], rel=1e-5, abs=1e-7)
        assert got["count_k"] == want["count_k"] and got["samples"] == want["samples"]

    # Nothing lost; the loss-free sample was skipped by its whole group, the one-shard sample trained.
    assert summary["lost"] == 0 and summary["trained"] == base_summary["trained"]
    assert summary["skipped_by_reason"] == base_summary["skipped_by_reason"] != {}
    sp = u * r
    ranks = [json.loads((out / "ranks" / f"rank{n}.json").read_text()) for n in range(dp * sp)]
    for rank in ranks:
        # Each rank reads only its own shard: (C + K) of every L rows, plus a small header.
        share = rank["rows_read"] / rank["sample_rows"]
        assert share < 1.0 / sp + 0.35
        assert rank["bytes_read"] / rank["full_sample_bytes"] == pytest.approx(share, abs=0.03)
        assert rank["keys_deleted"] == rank["samples_read"]
        assert len(rank["peak_mem_bytes"]) == 4 and min(rank["peak_mem_bytes"]) > 0 and rank["data_wait_s"] >= 0
    assert all(m["peak_mem_bytes"] >= max(r["peak_mem_bytes"][m["step"] - 1] for r in ranks) for m in metrics)
    put = sum(p["store"]["keys_put"] for p in summary["producers"])
    assert put == sum(rank["keys_deleted"] for rank in ranks)
    if store == "mooncake":
        assert summary["keys_left"] == 0


@pytest.mark.timeout(180)
def test_unreachable_store_stops_the_run_naming_the_rank(ray_session, data_dir, tmp_path):
    from longdraft.store.mooncake_master import free_port

    cfg = _config(data_dir, tmp_path / "fail", 1, 2, 1, "mooncake", run_timeout_s=150)
    cfg.store.mooncake.master_address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(
        RuntimeError,
        match=r"trainer rank \d \(setup\) failed; the run was stopped: StoreError: cannot reach the Mooncake master",
    ):
        run_pipeline(cfg, None)


def _assert_steps_equal(got_records, want_records, rel, keys=("loss", "loss_k", "acc_k")):
    assert [r["step"] for r in got_records] == [r["step"] for r in want_records]
    for got, want in zip(got_records, want_records):
        for key in keys:
            g, w = got[key], want[key]
            pairs = zip(g, w) if isinstance(g, list) else [(g, w)]
            assert all(_close(a, b, rel) for a, b in pairs), (got["step"], key, g, w)


@pytest.mark.timeout(420)
def test_eval_and_resume_on_two_ranks_equal_one_device(ray_session, data_dir, tmp_path):
    """U=2 with held-out evaluation equals the one-device run (train and eval_* metrics), and a
    U=2 run resumed from its step-2 checkpoint continues exactly like the uninterrupted run."""
    extra = dict(eval_every=2, save_every=2)
    local = _config(data_dir, tmp_path / "local", 1, 1, 1, "ray", **extra)
    local.data.eval_path = str(data_dir / "eval.jsonl")
    run_training(local)
    sp2 = _config(data_dir, tmp_path / "sp2", 1, 2, 1, "ray", **extra)
    sp2.data.eval_path = str(data_dir / "eval.jsonl")
    run_training(sp2)
    one, two = read_metrics(tmp_path / "local"), read_metrics(tmp_path / "sp2")
    eval_keys = ("eval_loss", "eval_loss_k", "eval_acc_k", "eval_sim_acc_len")
    assert all(key in two[1] and key in two[3] for key in eval_keys)
    _assert_steps_equal(two, one, 1e-5, ("loss", "loss_k", "acc_k", "count_k"))
    _assert_steps_equal([two[1], two[3]], [one[1], one[3]], 1e-5, eval_keys)

    # Killed after the step-2 checkpoint: the step-4 checkpoint and the export never came.
    resumed_dir = tmp_path / "sp2_resumed"
    shutil.copytree(tmp_path / "sp2", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step_4")
    shutil.rmtree(resumed_dir / "final")
    assert latest_checkpoint(resumed_dir).name == "step_2"
    sp2.output.dir, sp2.training.resume = str(resumed_dir), True
    run_training(sp2)
    resumed = read_metrics(resumed_dir)
    _assert_steps_equal(resumed, two, 1e-6, ("loss", "loss_k", "acc_k", "grad_norm", "count_k"))
    _assert_steps_equal([resumed[3]], [two[3]], 1e-6, eval_keys)
    assert json.loads((resumed_dir / "summary.json").read_text())["trained"] == 2 * 4 - 1  # one sample skipped


def _actor_pids(title: str) -> list[int]:
    """Processes of actors whose Ray process title starts with ``ray::<title>``."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith(f"ray::{title}"):
                pids.append(int(entry))
    return pids


def _producer_pids() -> list[int]:
    return _actor_pids("_ProducerWithEngine")


def _wait_for_steps(out, steps: int, runner, timeout_s: float = 150) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not (out / "metrics.jsonl").is_file() or len(read_metrics(out)) < steps:
        assert time.monotonic() < deadline and runner.is_alive(), f"the run never reached step {steps}"
        time.sleep(0.02)


@pytest.mark.timeout(360)
@pytest.mark.parametrize("store", ["ray", "mooncake"])
def test_a_killed_producer_does_not_end_the_run(ray_session, data_dir, tmp_path, store):
    import os
    import signal
    import threading

    steps = 12  # the stream outlasts what the pool and queues buffer, so the producer is still busy
    local = _config(data_dir, tmp_path / "local", 1, 1, 1, "ray", num_steps=steps)
    run_training(local)
    cfg = _config(data_dir, tmp_path / "kill", 1, 2, 1, store, num_steps=steps)
    cfg.inference.batch_size = 1  # many small produce calls
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(loop=run_pipeline(cfg, None)), daemon=True)
    runner.start()
    _wait_for_steps(tmp_path / "kill", 2, runner)
    (victim,) = _producer_pids()
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=240)
    assert "loop" in outcome, "the run did not finish"
    summary = json.loads((tmp_path / "kill" / "summary.json").read_text())
    total = steps * 4
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["trained"] + summary["skipped"] == total
    assert summary["keys_left"] in (None, 0)
    # The restarted producer is a new process that wrote only the rest of the stream.
    assert victim not in _producer_pids()
    assert 0 < summary["producers"][0]["samples"] < total
    _assert_steps_equal(
        read_metrics(tmp_path / "kill"), read_metrics(tmp_path / "local"), 1e-5, ("loss", "loss_k", "acc_k", "count_k")
    )
    print({k: summary[k] for k in ("producer_failures", "reissued", "lost", "duplicated")})


@pytest.mark.timeout(360)
def test_a_killed_trainer_stops_the_run_naming_it_and_resume_continues_exactly(ray_session, data_dir, tmp_path):
    import os
    import signal
    import threading

    steps = 8
    local = _config(data_dir, tmp_path / "local", 1, 1, 1, "ray", num_steps=steps, save_every=2)
    run_training(local)
    cfg = _config(data_dir, tmp_path / "sp2", 1, 2, 1, "ray", num_steps=steps, save_every=2)
    failure = {}

    def run():
        try:
            run_pipeline(cfg, None)
        except RuntimeError as exc:
            failure["error"] = str(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    _wait_for_steps(tmp_path / "sp2", 3, runner)  # the step-2 checkpoint exists
    trainers = sorted(_actor_pids("TrainerRank"))
    os.kill(trainers[-1], signal.SIGKILL)
    runner.join(timeout=200)
    assert "error" in failure, "the run went on without a trainer rank"
    assert failure["error"].startswith("trainer rank ") and "failed; the run was stopped" in failure["error"]
    assert not (tmp_path / "sp2" / "final").exists()
    cfg.training.resume = True
    run_training(cfg)
    _assert_steps_equal(
        read_metrics(tmp_path / "sp2"),
        read_metrics(tmp_path / "local"),
        1e-5,
        ("loss", "loss_k", "acc_k", "count_k", "grad_norm"),
    )


@pytest.mark.timeout(300)
def test_a_store_smaller_than_the_window_slows_the_run_but_never_fails_it(ray_session, data_dir, tmp_path):
    """Long samples (~2.2 MB each) into a 16 MiB Mooncake pool, with an in-flight window far larger
    than the pool: the run never fails, every sample trains, no key is left. (Trainers read their
    shards eagerly, so here the pool drains as fast as it fills; a put's wait on a full pool is
    tested against a real master in test_store_mooncake.py.)"""
    cfg = _config(
        data_dir,
        tmp_path / "full",
        1,
        2,
        1,
        "mooncake",
        num_steps=5,
        max_seq_length=4000,
        ttt_length=7,
        activation_checkpointing=True,
    )  # slow trainers: the producer runs ahead
    cfg.data.train_path = str(_long_rows(tmp_path / "long.jsonl", 5000))
    cfg.store.max_inflight_mb = 1024  # the controller alone would put far more in flight than the pool holds
    cfg.store.mooncake.put_timeout_s = 120
    cfg.inference.batch_size = 4
    run_pipeline(cfg, None)
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["lost"] == 0 and summary["trained"] == 5 * 4 and summary["keys_left"] == 0
    assert summary["peak_inflight_bytes"] > 16 << 20  # more than the whole pool was in flight


def _long_rows(path, words_per_row: int, rows: int = 10):
    import random

    rng = random.Random(0)
    words = ["thou", "art", "more", "lovely", "and", "temperate", "rough", "winds", "do", "shake"]
    return write_tiny_jsonl(
        path, [{"text": " ".join(rng.choice(words) for _ in range(words_per_row))} for _ in range(rows)]
    )


@pytest.mark.timeout(300)
def test_the_in_flight_byte_budget_bounds_what_producers_write(ray_session, data_dir, tmp_path):
    from longdraft.pipeline.sizes import sample_sizes

    cfg = _config(data_dir, tmp_path / "budget", 1, 2, 1, "ray", num_steps=5, max_seq_length=1000)
    cfg.data.train_path = str(_long_rows(tmp_path / "long.jsonl", 1500))
    cfg.store.max_inflight_mb = 1  # below one global batch (4 x ~0.5 MB): only that batch is let through
    run_pipeline(cfg, None)
    summary = json.loads((tmp_path / "budget" / "summary.json").read_text())
    one_batch = 4 * sample_sizes(cfg).sample_bytes(1000)
    assert summary["lost"] == 0 and summary["trained"] == 5 * 4 and summary["max_inflight_bytes"] == 1 << 20
    assert summary["budget_waits"] > 0 and 0 < summary["peak_inflight_bytes"] <= one_batch
