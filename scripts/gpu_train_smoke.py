"""On a GPU: train a draft for the shipped Shakespeare target for a few steps in fp32 and bf16 and
print the per-step losses side by side (CUDA autocast, flash kernels in the real training path)."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time

from longdraft.config import config_from_dict
from longdraft.run import run_training
from longdraft.train.metrics_log import read_metrics


def run(precision: str, out: str, steps: int) -> dict:
    cfg = config_from_dict(
        {
            "data": {"train_path": "examples/shakespeare/data/train_text.jsonl", "max_rows": 256},
            "model": {"target_path": "examples/shakespeare/target"},
            "training": {
                "max_seq_length": 512,
                "ttt_length": 7,
                "batch_size": 8,
                "micro_batch_size": 8,
                "num_steps": steps,
                "lr": 3e-3,
                "precision": precision,
                "device": "cuda",
            },
            "output": {"dir": out, "plot": False},
        }
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON
        run_training(cfg)
    metrics = read_metrics(out)
    return {
        "precision": precision,
        "wall_s": time.perf_counter() - start,
        "loss": [round(m["loss"], 4) for m in metrics],
        "acc_0": [round(m["acc_k"][0], 3) for m in metrics],
        "tokens_per_s_last": metrics[-1]["tokens_per_s"],
        "peak_mem_bytes": metrics[-1]["peak_mem_bytes"],
    }


if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps([run(p, f"{tmp}/{p}", steps) for p in ("fp32", "bf16")], indent=1))
