"""``longdraft plan`` on tiny dimensions: the fake process group's collectives, the estimate against the
measured step, and per-rank activation memory against the SP size (one process, torch's fake group)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from longdraft.config import config_from_dict
from longdraft.plan.fake_world import fake_world
from longdraft.plan.run import plan


def _tiny_target(path, heads: int = 8, kv_heads: int = 2):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_attention_heads": heads,
                "num_key_value_heads": kv_heads,
                "num_hidden_layers": 8,
                "vocab_size": 1024,
                "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-5,
                "torch_dtype": "float32",
            }
        )
    )
    return path


def _cfg(tmp_path, length: int, world: int, ulysses: int, ring: int = 1, **training):
    sp = ulysses * ring
    return config_from_dict(
        {
            "data": {"train_path": "unused.jsonl"},
            "model": {"target_path": str(_tiny_target(tmp_path / "target")), "draft_vocab_size": 256},
            "training": {
                "device": "cpu",
                "max_seq_length": length,
                "num_trainers": world,
                "sp_ulysses_size": ulysses,
                "sp_ring_size": ring,
                "batch_size": world // sp,
                "micro_batch_size": 1,
                **training,
            },
            "output": {"dir": str(tmp_path / "out")},
        }
    )


def test_fake_group_collectives_give_the_shapes_of_the_real_ones():
    from longdraft.attention.ring import RingComm, ring_attention_forward
    from longdraft.attention.ring_gather import gather_ring
    from longdraft.attention.ulysses import heads_to_sequence, sequence_to_heads
    from longdraft.parallel.mesh import USPMesh

    with fake_world(4, 3):
        mesh = USPMesh.build(2, 2, 4, 2)
        x = torch.randn(1, 4, 8, 16)
        seq = heads_to_sequence(x, mesh.ulysses_group, 2)
        assert seq.shape == (1, 2, 16, 16)
        assert sequence_to_heads(seq, mesh.ulysses_group, 2).shape == x.shape
        comm = RingComm(mesh.ring_group, 2, mesh.coords.ring)
        assert gather_ring(seq, comm).shape == (2, 1, 2, 16, 16)
        out, lse = ring_attention_forward(seq, seq, seq, comm, "zigzag", 0.25)  # send/recv: supported
        assert out.shape == seq.shape and lse.shape == (1, 2, 16)


@pytest.fixture
def uninitialised_memory_is_nan():
    """``torch.empty`` filled with NaN, so a receive buffer the fake group leaves unwritten shows."""
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(False)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def test_estimate_is_within_10_percent_of_the_measured_step_with_ring_send_recv(tmp_path, uninitialised_memory_is_nan):
    cfg = _cfg(tmp_path, 512, 4, 2, 2, shard_order="zigzag", ring_mode="ring")
    result = plan(cfg, 4, 3, random_weights=True, method="both")
    estimate, measured = result["estimate"]["peak_bytes"], result["measured"]["peak_bytes"]
    assert measured["activations"] > 0.5 * measured["total"]
    assert abs(estimate["total"] - measured["total"]) <= 0.10 * measured["total"], (estimate, measured)
    assert abs(estimate["activations"] - measured["activations"]) <= 0.10 * measured["activations"]
    # ring receives complete without data under the fake group; zero-filled, the step stays finite
    assert math.isfinite(result["measured"]["loss"])
    # The same step moves the same bytes; the gradient sum is 2(n-1)/n of the fp32 gradients.
    sent = result["measured"]["collective_bytes"]
    assert sent == result["estimate"]["collective_bytes"]
    assert sent["all_to_all/ulysses"] > 0 and sent["send/ring"] > 0
    n_params = 64 * 192 + (128 * 64 + 2 * 128 * 16) + 64 * 64 + 3 * 64 * 128 + 3 * 64 + 256 * 64
    grad_sum = n_params * 4 * 2 * 3 // 4
    assert grad_sum <= sent["all_reduce/world"] <= grad_sum + 4096
    assert result["ring_mode"] == "ring" and result["coords"] == {"dp": 0, "ring": 1, "ulysses": 1}


@pytest.mark.timeout(600)
def test_per_rank_activation_memory_falls_as_one_over_sp_size(tmp_path):
    activations = {}
    for sp in (1, 2, 4, 8):
        result = plan(_cfg(tmp_path, 2048, 8, sp), 8, 0, random_weights=True, method="estimate")
        assert result["measured"] is None and result["layout"] == f"DP{8 // sp} x U{sp} x R1"
        activations[sp] = result["estimate"]["peak_bytes"]["activations"]
    for sp in (2, 4, 8):
        assert activations[sp] * sp == pytest.approx(activations[1], rel=0.15), activations


_RSS_SCRIPT = """
import json, torch
from longdraft.bench.memory import PeakMeter
from longdraft.config import load_config
from longdraft.plan.fake_world import fake_world
from longdraft.plan.parts import build_plan_parts
from longdraft.plan.run import _tracked_step
from longdraft.plan.step_call import run_train_step
torch.set_num_threads(1)
cfg = load_config("examples/shakespeare/draft.yaml")
with fake_world(1, 0):
    parts = build_plan_parts(cfg, torch.device("cpu"), torch.device("cpu"), 1 << 34, False)
    run_train_step(parts)
    meter = PeakMeter(torch.device("cpu"))
    meter.start()
    run_train_step(parts)
    rss = meter.peak()
    peak, _ = _tracked_step(parts, torch.device("cpu"))
print(json.dumps({"rss_delta": rss, "peak": peak}))
"""


@pytest.mark.timeout(300)
def test_measured_peak_agrees_with_the_resident_set_on_cpu():
    """The tracker counts live tensor bytes; the resident set (glibc returning every freed block, as
    ``bench memory`` sets it) is an independent count of the same step's memory above its start."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT], cwd=repo, env=env, capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = result["peak"]
    above_start = peak["total"] - peak["weights"] - peak["optimizer"] - peak["shards"]
    assert above_start == pytest.approx(result["rss_delta"], rel=0.10), result


@pytest.mark.parametrize("method", ["estimate", "measure"])
def test_only_one_micro_batch_of_shards_is_on_the_device(tmp_path, method):
    """Four micro-batches per step and a held-out set: the device holds the micro-batch being trained
    (and, for a moment, the previous one, which the step's loop still names while it reads the next;
    a CPU plan copies on demand, no look-ahead), never the step's four or the held-out set."""
    cfg = _cfg(tmp_path, 64, 2, 2, batch_size=4, eval_every=1)
    result = plan(cfg, 2, 0, method=method, random_weights=True)
    col = result["estimate" if method == "estimate" else "measured"]
    one = result["micro_batch_shard_bytes"]
    assert result["micro_batches"] == 4
    assert one <= col["peak_bytes"]["shards"] <= 2 * one
    host = result["host_bytes"]
    assert host["step_batches"] == 4 * one
    assert host["held_out"] == cfg.eval.num_prompts * 4 * one
