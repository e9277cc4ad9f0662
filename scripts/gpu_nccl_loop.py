"""On a GPU: the whole training loop under a real process group of one rank, started through
``parallel/launch.py``: the loop's and the step's reductions, the bucketed gradient sum, checkpoints
written on CUDA and a resume from one. Prints one JSON object; exit status 1 if a run failed.

``--backend``: ``nccl`` (the group a CUDA trainer rank makes) or ``cpu:gloo,cuda:nccl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time


def _train(cfg, checkpoint) -> dict:
    import torch.distributed as dist

    from longdraft.attention.factory import make_attention_backend
    from longdraft.device import resolve_device
    from longdraft.engines.factory import build_engine
    from longdraft.parallel.reduction import SumReducer
    from longdraft.step_meter import StepMeter
    from longdraft.train.checkpoint import checkpoint_extra
    from longdraft.train.local_source import LocalSource
    from longdraft.train.loop import train_loop
    from longdraft.train.rank_context import RankContext
    from longdraft.train.setup import build_train_parts, load_held_out, load_tokenizer, training_stream, vocab_for

    tokenizer = load_tokenizer(cfg)
    held_out, _ = load_held_out(cfg, tokenizer)
    device = resolve_device(cfg.training.device)
    parts = build_train_parts(cfg, vocab_for(cfg, tokenizer), device)
    position = checkpoint_extra(checkpoint)["stream_position"] if checkpoint else 0
    stream = training_stream(cfg, tokenizer, position)
    source = LocalSource(cfg, stream, held_out, build_engine(cfg, device), device)
    rank = RankContext(
        source,
        make_attention_backend(cfg.attention_backend),
        SumReducer(dist.group.WORLD, device),  # every reduction through the real group, bucketed gradients included
        device,
        StepMeter.for_device(device),
        progress_bar=False,
    )
    loop = train_loop(cfg, parts, rank, checkpoint=checkpoint)
    return {"steps": len(loop.history), "loss": [round(m["loss"], 4) for m in loop.history]}


def _rank(rank: int, world: int, out: str, steps: int, device: str) -> dict:
    from longdraft.config import config_from_dict
    from longdraft.train.checkpoint import latest_checkpoint

    def config(num_steps: int, resume: bool):
        return config_from_dict(
            {
                "data": {
                    "train_path": "examples/shakespeare/data/train_text.jsonl",
                    "eval_path": "examples/shakespeare/data/heldout_text.jsonl",
                    "max_rows": 128,
                },
                "model": {"target_path": "examples/shakespeare/target", "draft_vocab_size": 1024},
                "training": {
                    "device": device,
                    "max_seq_length": 256,
                    "batch_size": 4,
                    "micro_batch_size": 2,  # two micro-batches: accumulation, then the armed bucketed sum
                    "num_steps": num_steps,
                    "lr": 3e-3,
                    "grad_bucket_mb": 1,
                    "save_every": 2,
                    "eval_every": 2,
                    "resume": resume,
                },
                "eval": {"num_prompts": 4},
                "output": {"dir": out, "plot": False},
            }
        )

    with contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON only
        first = _train(config(steps, False), None)
        checkpoint = latest_checkpoint(out)
        resumed = _train(config(steps + 2, True), checkpoint)
    return {"first": first, "resumed_from": str(checkpoint), "resumed": resumed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="nccl")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cuda", help="cpu: try the script itself without a GPU (with gloo)")
    parser.add_argument("--timeout", type=float, default=150.0)
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())
    from longdraft.parallel.launch import run_ranks

    start = time.perf_counter()
    result = {"check": "loop_world_1", "backend": args.backend, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            value = run_ranks(
                _rank, 1, (tmp, args.steps, args.device), timeout_s=args.timeout, backend=args.backend, threads=None
            )[0]
            result.update(ok=True, **value)
        except Exception as exc:  # the failure is the result: report it as one line
            result.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[-1500:]}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
