"""``longdraft plan`` from the command line: the quick-start config (estimated and measured on CPU) and
a Llama-3.1-8B-shaped config with random weights from config.json alone (estimated, no download)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longdraft.config import load_config
from longdraft.pipeline.sizes import sample_sizes

REPO = Path(__file__).resolve().parents[2]
LLAMA = "examples/plan/llama31_8b/plan_128k.yaml"


def _plan(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "longdraft.cli", "plan", *args, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.timeout(600)
def test_plan_of_the_quick_start_config_is_measured_and_estimated_alike():
    result = _plan("examples/shakespeare/draft.yaml")
    assert result["measured"] is not None and result["estimate"] is not None
    measured, estimate = result["measured"]["peak_bytes"]["total"], result["estimate"]["peak_bytes"]["total"]
    assert abs(estimate - measured) <= 0.10 * measured
    assert result["step_time_s"] > 0 and result["fits"]
    cfg = load_config(REPO / "examples/shakespeare/draft.yaml")
    assert result["store_bytes_per_sample"] == sample_sizes(cfg).sample_bytes(cfg.training.max_seq_length)


@pytest.mark.timeout(600)
def test_plan_of_llama_8b_shapes_with_random_weights_without_a_gpu():
    short = _plan(
        LLAMA, "--random-weights", "--world", "2", "training.max_seq_length=32768", "training.sp_ulysses_size=2"
    )
    assert short["measured"] is None and short["measured_skipped"] == "no GPU here"
    assert short["precision"] == "bf16" and short["layout"] == "DP1 x U2 x R1"
    peak = short["estimate"]["peak_bytes"]
    vocab, hidden, draft_vocab = 128256, 4096, 32000
    trainable = 3 * hidden * hidden + 2 * hidden * (32 * 128 + 2 * 8 * 128) + 32 * 128 * hidden
    trainable += 3 * hidden * 14336 + 4 * hidden + draft_vocab * hidden
    frozen = 2 * vocab * hidden  # fp32 embedding buffer and target head, as train/setup.py builds them
    assert peak["weights"] == pytest.approx(4 * (trainable + frozen), rel=0.01)
    assert peak["optimizer"] == pytest.approx(2 * 4 * trainable, rel=0.01)
    assert peak["shards"] == pytest.approx((16384 + 7) * 4 * hidden * 2, rel=0.01)  # bf16 aux (3H) + last (H)
    # 128K over 8 ranks holds the same 16K queries per rank as 32K over 2: the same activations.
    long = _plan(LLAMA, "--random-weights")
    assert long["layout"] == "DP1 x U8 x R1" and long["local_queries_per_sample"] == 16384
    assert long["estimate"]["peak_bytes"]["activations"] == pytest.approx(peak["activations"], rel=0.05)
