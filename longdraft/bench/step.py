"""``longdraft bench step``: the whole training step (draft unroll, loss, backward, gradient sum over
ranks, optimizer) with USP against data parallelism on the same tokens, with its time breakdown.

Baseline ``dp``: each of the S ranks trains its own whole sequence of ``--seq-len`` tokens
(SP = 1). Every USP layout trains the same S sequences per step, each split over the S ranks
(S micro-batches of one shard per rank). Each layout runs in fresh processes (gloo on CPU).

Reported per layout: ``step_s`` (median over iterations of the slowest rank's step; with
``--rounds N``, the fastest of N interleaved rounds),
``ratio_to_dp``, the slowest rank's ``time_s`` breakdown (forward, backward, the gradient sum's
exposed wait, optimizer, and inside forward + backward the attention (ring waits included) and the
loss), communication bytes per step per collective kind and the time blocked in them, and the
gradient all-reduce's bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from longdraft.bench.attention import LayoutSpec
from longdraft.bench.rounds import best_of_rounds, select_layouts
from longdraft.parallel.launch import run_ranks
from longdraft.parallel.mesh import validate_usp_sizes


@dataclass(frozen=True)
class StepBenchConfig:
    seq_len: int = 4096
    ranks: int = 2
    hidden: int = 256
    heads: int = 8
    kv_heads: int = 2
    intermediate: int = 768
    draft_vocab: int = 4096
    target_vocab: int = 16384
    ttt: int = 7
    loss_chunk: int = 1024
    grad_bucket_mb: float = 25.0
    iters: int = 3
    warmup: int = 1
    threads: int = 1


def step_layouts(ranks: int, heads: int) -> list[LayoutSpec]:
    specs = [LayoutSpec("dp", usp=False)]
    for ulysses in range(ranks, 0, -1):
        if ranks % ulysses or heads % ulysses:
            continue
        ring = ranks // ulysses
        if ring == 1:
            specs.append(LayoutSpec(f"U{ulysses}R1", ulysses, 1))
        else:
            for mode in ("gather", "ring"):
                specs.append(LayoutSpec(f"U{ulysses}R{ring}-zigzag-{mode}", ulysses, ring, "zigzag", ring_mode=mode))
    return specs


def _rank_step(rank: int, world: int, cfg_dict: dict, spec_dict: dict) -> dict:
    from longdraft.attention.factory import make_attention_backend
    from longdraft.bench.draft_inputs import bench_draft, bench_shard
    from longdraft.parallel.mesh import USPMesh
    from longdraft.parallel.reduction import SumReducer
    from longdraft.sharding.layout import ShardLayout
    from longdraft.step_meter import StepMeter
    from longdraft.train.step import StepSettings, train_step

    cfg, spec = StepBenchConfig(**cfg_dict), LayoutSpec(**spec_dict)
    device = torch.device("cpu")
    model, head = bench_draft(
        cfg.hidden,
        cfg.heads,
        cfg.kv_heads,
        cfg.intermediate,
        cfg.draft_vocab,
        cfg.target_vocab,
        2 * cfg.seq_len,
        device,
    )
    meter = StepMeter()  # timing on, also on CUDA: this is the measurement
    if spec.usp:
        mesh = USPMesh.build(spec.ulysses, spec.ring, cfg.heads, cfg.kv_heads)
        backend = make_attention_backend(
            "usp",
            mesh=mesh,
            num_heads=cfg.heads,
            num_kv_heads=cfg.kv_heads,
            order=spec.order,
            ring_mode=spec.ring_mode,
            meter=meter,
        )
        layout = ShardLayout(cfg.seq_len, spec.ulysses, spec.ring, cfg.ttt, spec.order)
        batches = [
            bench_shard(layout, rank, cfg.hidden, cfg.target_vocab, device, head.dtype, seed=s) for s in range(world)
        ]
    else:
        backend = make_attention_backend("fast", meter=meter)
        layout = ShardLayout(cfg.seq_len, 1, 1, cfg.ttt)
        batches = [bench_shard(layout, 0, cfg.hidden, cfg.target_vocab, device, head.dtype, seed=rank)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    settings = StepSettings(cfg.ttt, cfg.loss_chunk, grad_bucket_mb=cfg.grad_bucket_mb)
    reducer = SumReducer(dist.group.WORLD, device)
    rows = []
    for i in range(cfg.warmup + cfg.iters):
        dist.barrier()
        start = time.perf_counter()
        metrics = train_step(model, batches, backend, head, optimizer, scheduler, settings, reducer, meter)
        elapsed = time.perf_counter() - start
        if i >= cfg.warmup:
            rows.append(
                {
                    "step_s": elapsed,
                    "time_s": metrics["time_s"],
                    "comm_bytes": dict(meter.comm_bytes),
                    "comm_wait_s": dict(meter.comm_wait_s),
                    "grad_sum_bytes": metrics["grad_sum_bytes"],
                }
            )
    middle = sorted(rows, key=lambda r: r["step_s"])[len(rows) // 2]
    return {
        **middle,
        "step_s_iters": [r["step_s"] for r in rows],
        "local_tokens": sum(b.query_tokens() for b in batches),
    }


def run_step_layout(cfg: StepBenchConfig, spec: LayoutSpec, timeout_s: float) -> dict:
    if spec.usp:
        validate_usp_sizes(cfg.ranks, spec.ulysses, spec.ring, cfg.heads, cfg.kv_heads)
    per_rank = run_ranks(_rank_step, cfg.ranks, (asdict(cfg), asdict(spec)), timeout_s=timeout_s, threads=cfg.threads)
    slowest = max(per_rank, key=lambda r: r["step_s"])
    iters = [max(r["step_s_iters"][i] for r in per_rank) for i in range(cfg.iters)]
    return {
        "layout": spec.name,
        "seq_len": cfg.seq_len,
        "ranks": cfg.ranks,
        "step_s": statistics.median(iters),
        "time_s": {k: round(v, 4) for k, v in slowest["time_s"].items()},
        "comm_bytes": slowest["comm_bytes"],
        "comm_wait_s": {k: round(v, 4) for k, v in slowest["comm_wait_s"].items()},
        "grad_sum_bytes": slowest["grad_sum_bytes"],
        "rank_step_s": [round(r["step_s"], 4) for r in per_rank],
        "local_tokens": per_rank[0]["local_tokens"],
        "ring_mode": spec.ring_mode if spec.usp and spec.ring > 1 else None,
        "config": asdict(cfg),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longdraft bench step", description=__doc__.split("\n")[0])
    d = StepBenchConfig()
    for name in (
        "seq_len",
        "ranks",
        "hidden",
        "heads",
        "kv_heads",
        "intermediate",
        "draft_vocab",
        "target_vocab",
        "ttt",
        "loss_chunk",
        "iters",
        "warmup",
        "threads",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument(
        "--grad-bucket-mb", type=float, default=d.grad_bucket_mb, help="0: one all-reduce after the backward"
    )
    p.add_argument("--layouts", default="", help="comma-separated subset, e.g. dp,U2R1,U1R2-zigzag-gather")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run all layouts this many times, interleaved, and keep each layout's fastest round",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per layout")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per layout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fields = {k: getattr(args, k) for k in asdict(StepBenchConfig())}
    cfg = StepBenchConfig(**fields)
    specs = select_layouts(step_layouts(cfg.ranks, cfg.heads), args.layouts)
    rows = best_of_rounds(specs, args.rounds, lambda spec: run_step_layout(cfg, spec, args.timeout), args.json)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    keys = ("forward_s", "backward_s", "attention_s", "loss_s", "grad_sum_s", "optimizer_s")
    print(f"{'layout':<22}{'step_s':>8}{'ratio':>7}" + "".join(f"{k[:-2]:>11}" for k in keys) + "  comm MB")
    for r in rows:
        mb = sum(r["comm_bytes"].values()) / 1e6
        print(
            f"{r['layout']:<22}{r['step_s']:>8.3f}{r['ratio_to_dp']:>7.2f}"
            + "".join(f"{r['time_s'].get(k, 0.0):>11.3f}" for k in keys)
            + f"  {mb:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
