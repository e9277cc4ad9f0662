"""``longdraft bench producer``: prefill throughput of the target engines (HF, vLLM) and how far
their features are apart.

Per engine: start-up time, then per length ``L`` one warm-up batch and ``--batches`` timed batches of
``--batch-size`` random prompts of ``L`` tokens (samples/s and tokens/s of prefill + feature
capture, features handed back to this process as a producer's hand-back path receives them). The
deviation is max |vLLM - HF| / max |HF| over the last timed batch, per feature.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def _engine(name: str, target: Path, max_length: int, batch_size: int):
    if name == "hf":
        from longdraft.engines.hf import HFTargetEngine

        return HFTargetEngine(target, dtype="fp32")
    from longdraft.engines.vllm_engine import VLLMTargetEngine

    return VLLMTargetEngine(target, dtype="fp32", max_length=max_length, batch_size=batch_size)


def run(engines: list[str], lengths: list[int], batch_size: int, batches: int, target: Path | None) -> dict:
    from longdraft.testing.tiny_target import build_tiny_target

    with tempfile.TemporaryDirectory() as tmp:
        if target is None:  # Shakespeare-target sized (head_dim 32: vLLM's CPU attention refuses 8)
            target = build_tiny_target(
                Path(tmp) / "target",
                hidden_size=128,
                num_heads=4,
                num_kv_heads=2,
                intermediate_size=512,
                num_layers=8,
                max_position_embeddings=max(lengths) + 64,
            )
        gen = torch.Generator().manual_seed(0)
        prompts = {n: [torch.randint(0, 384, (n,), generator=gen).tolist() for _ in range(batch_size)] for n in lengths}
        results, last = [], {}
        for name in engines:
            started = time.perf_counter()
            engine = _engine(name, Path(target), max(lengths), batch_size)
            start_s = time.perf_counter() - started
            try:
                for n in lengths:
                    engine.prefill(prompts[n])  # warm-up
                    t0 = time.perf_counter()
                    for _ in range(batches):
                        feats = engine.prefill(prompts[n])
                    wall = time.perf_counter() - t0
                    last[name, n] = feats
                    samples = batches * batch_size
                    results.append(
                        {
                            "engine": name,
                            "length": n,
                            "batch_size": batch_size,
                            "batches": batches,
                            "start_s": start_s,
                            "wall_s": wall,
                            "samples_per_s": samples / wall,
                            "tokens_per_s": samples * n / wall,
                        }
                    )
            finally:
                engine.close()
        deviation = {}
        if {"hf", "vllm"} <= set(engines):
            for n in lengths:
                pairs = list(zip(last["vllm", n], last["hf", n]))
                deviation[str(n)] = {
                    name: max(
                        float((getattr(v, name) - getattr(h, name)).abs().max() / getattr(h, name).abs().max())
                        for v, h in pairs
                    )
                    for name in ("aux_hidden", "last_hidden")
                }
        return {"results": results, "max_relative_deviation": deviation, "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="longdraft bench producer", description=__doc__.splitlines()[0])
    p.add_argument("--engines", default="hf,vllm", help="comma-separated: hf, vllm")
    p.add_argument("--lengths", default="256,2048", help="prompt lengths in tokens, comma-separated")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=3, help="timed batches per length (after one warm-up)")
    p.add_argument(
        "--target", type=Path, default=None, help="local HF target (default: a random 8-layer, 128-wide one)"
    )
    p.add_argument("--json", action="store_true", help="print JSON only")
    args = p.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    bad = [e for e in engines if e not in ("hf", "vllm")]
    if bad or not engines:
        p.error(f"--engines={args.engines!r}: expected a comma-separated subset of hf,vllm")
    report = run(engines, [int(x) for x in args.lengths.split(",")], args.batch_size, args.batches, args.target)
    if not args.json:
        for r in report["results"]:
            print(
                f"{r['engine']:>5s}  L={r['length']:>6d}  {r['samples_per_s']:8.2f} samples/s  "
                f"{r['tokens_per_s']:10.0f} tokens/s  (start {r['start_s']:.1f} s)"
            )
    print(json.dumps(report, indent=2))
    return 0
