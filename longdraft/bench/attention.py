"""``longdraft bench attention``: draft attention forward + backward over the TTT unroll.

Baseline ``dp``: data parallel on the same S ranks, each rank attends its own whole sequence of
``--seq-len`` tokens (the single-device fast path). Every USP layout ``U{u}R{r}`` (plus
``-zigzag`` when ``R > 1``) processes the same total tokens as split sequences: a batch of S
sequences of ``--seq-len`` tokens, each split over the S ranks. Each layout runs in fresh
processes, so its peak memory is its own.

Reported per layout: ``step_s`` (median wall time of one forward + backward over all TTT steps,
until the slowest rank is done; with ``--rounds N``, the fastest of N interleaved rounds), ``ratio_to_dp``, ``peak_mem_bytes`` (largest over ranks; CPU:
peak RSS growth over the process's RSS before the benchmark, CUDA: peak allocated),
``comm_s`` (time ranks spend blocked in all-to-alls and ring waits; transfers hidden behind
compute do not count), ``rank_busy_s`` (per rank, until its backward is done) and
``rank_compute_s`` (busy minus blocked time: shows the causal load imbalance of the contiguous ring).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from longdraft.attention.factory import make_attention_backend
from longdraft.bench.rounds import best_of_rounds, select_layouts
from longdraft.choices import RingMode, ShardOrder
from longdraft.parallel.launch import run_ranks
from longdraft.parallel.mesh import USPMesh, validate_usp_sizes
from longdraft.sharding.layout import ShardLayout
from longdraft.step_meter import StepMeter


@dataclass(frozen=True)
class BenchConfig:
    seq_len: int = 2048
    ranks: int = 2
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 64
    ttt: int = 7
    dtype: str = "float32"
    device: str = "cpu"
    iters: int = 3
    warmup: int = 1
    threads: int = 1


@dataclass(frozen=True)
class LayoutSpec:
    name: str
    ulysses: int = 1
    ring: int = 1
    order: ShardOrder = "contiguous"
    usp: bool = True
    ring_mode: RingMode = "ring"


def layouts_for(cfg: BenchConfig) -> list[LayoutSpec]:
    specs = [LayoutSpec("dp", usp=False)]
    for ulysses in range(cfg.ranks, 0, -1):
        if cfg.ranks % ulysses or cfg.heads % ulysses:
            continue
        ring = cfg.ranks // ulysses
        specs.append(LayoutSpec(f"U{ulysses}R{ring}", ulysses, ring))
        if ring > 1:
            specs.append(LayoutSpec(f"U{ulysses}R{ring}-zigzag", ulysses, ring, "zigzag"))
            specs.append(LayoutSpec(f"U{ulysses}R{ring}-gather", ulysses, ring, ring_mode="gather"))
            specs.append(LayoutSpec(f"U{ulysses}R{ring}-zigzag-gather", ulysses, ring, "zigzag", ring_mode="gather"))
    return specs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _inputs(cfg: BenchConfig, batch: int, seq: int, device: torch.device, seed: int):
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, cfg.dtype)

    def rand(heads: int) -> torch.Tensor:
        return torch.randn(batch, heads, seq, cfg.head_dim, generator=gen).to(device=device, dtype=dtype)

    qs = [rand(cfg.heads).requires_grad_() for _ in range(cfg.ttt)]
    ks = [rand(cfg.kv_heads).requires_grad_() for _ in range(cfg.ttt)]
    vs = [rand(cfg.kv_heads).requires_grad_() for _ in range(cfg.ttt)]
    return qs, ks, vs


def _step(backend, qs, ks, vs) -> None:
    keys, values, loss = [], [], 0.0
    for q, k, v in zip(qs, ks, vs):
        pq, pk, pv = backend.prepare(q, k, v)
        keys.append(pk)
        values.append(pv)
        loss = loss + backend.finish(backend.attend(pq, keys, values)).float().sum()
    loss.backward()
    for t in (*qs, *ks, *vs):
        t.grad = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rank_bench(rank: int, world: int, cfg_dict: dict, spec_dict: dict) -> dict:
    cfg, spec = BenchConfig(**cfg_dict), LayoutSpec(**spec_dict)
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if cfg.device == "cuda" else torch.device("cpu")
    meter = StepMeter()  # timing on, also on CUDA: this is the measurement
    if spec.usp:
        mesh = USPMesh.build(spec.ulysses, spec.ring, cfg.heads, cfg.kv_heads)
        backend = make_attention_backend(
            "usp",
            mesh=mesh,
            num_heads=cfg.heads,
            num_kv_heads=cfg.kv_heads,
            order=spec.order,
            meter=meter,
            ring_mode=spec.ring_mode,
        )
        batch, seq = world, ShardLayout(cfg.seq_len, spec.ulysses, spec.ring, 0, spec.order).local_queries
    else:
        backend = make_attention_backend("fast")
        batch, seq = 1, cfg.seq_len
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_bytes()
    qs, ks, vs = _inputs(cfg, batch, seq, device, seed=rank)
    step_s, busy_s, comm_s, comm_bytes = [], [], [], []
    for i in range(cfg.warmup + cfg.iters):
        meter.start(device)
        dist.barrier()
        start = time.perf_counter()
        _step(backend, qs, ks, vs)
        _sync(device)
        busy = time.perf_counter() - start
        dist.barrier()
        if i >= cfg.warmup:
            step_s.append(time.perf_counter() - start)
            busy_s.append(busy)
            comm_s.append(meter.comm_wait_total())
            comm_bytes.append(dict(meter.comm_bytes))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss_bytes() - rss_before
    return {
        "step_s": statistics.median(step_s),
        "busy_s": statistics.median(busy_s),
        "comm_s": statistics.median(comm_s),
        "comm_bytes": comm_bytes[-1] if comm_bytes else {},
        "peak_mem_bytes": peak,
        "local_tokens": batch * seq,
    }


def run_layout(cfg: BenchConfig, spec: LayoutSpec, timeout_s: float) -> dict:
    if spec.usp:
        validate_usp_sizes(cfg.ranks, spec.ulysses, spec.ring, cfg.heads, cfg.kv_heads)
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    per_rank = run_ranks(
        _rank_bench,
        cfg.ranks,
        (asdict(cfg), asdict(spec)),
        timeout_s=timeout_s,
        backend=backend,
        threads=cfg.threads,
    )
    return {
        "layout": spec.name,
        "seq_len": cfg.seq_len,
        "ranks": cfg.ranks,
        "step_s": max(r["step_s"] for r in per_rank),
        "peak_mem_bytes": max(r["peak_mem_bytes"] for r in per_rank),
        "peak_mem_bytes_per_rank": [r["peak_mem_bytes"] for r in per_rank],
        "comm_s": max(r["comm_s"] for r in per_rank),
        "comm_bytes_per_rank": max((r["comm_bytes"] for r in per_rank), key=lambda b: sum(b.values())),
        "rank_busy_s": [round(r["busy_s"], 4) for r in per_rank],
        "rank_compute_s": [round(r["busy_s"] - r["comm_s"], 4) for r in per_rank],
        "ulysses": spec.ulysses if spec.usp else None,
        "ring": spec.ring if spec.usp else None,
        "zigzag": spec.order == "zigzag",
        "ring_mode": spec.ring_mode if spec.usp and spec.ring > 1 else None,
        "sequences": cfg.ranks,
        "local_tokens": per_rank[0]["local_tokens"],
        "ttt": cfg.ttt,
        "heads": cfg.heads,
        "kv_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "threads": cfg.threads,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longdraft bench attention", description=__doc__.split("\n")[0])
    d = BenchConfig()
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per sequence")
    p.add_argument("--ranks", type=int, default=d.ranks, help="S: ranks (= sequences per step)")
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--kv-heads", type=int, default=d.kv_heads)
    p.add_argument("--head-dim", type=int, default=d.head_dim)
    p.add_argument("--ttt", type=int, default=d.ttt, help="TTT steps")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=d.dtype)
    p.add_argument("--device", choices=["cpu", "cuda"], default=d.device)
    p.add_argument("--iters", type=int, default=d.iters)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per rank")
    p.add_argument("--layouts", default="", help="comma-separated subset, e.g. dp,U1R2,U1R2-zigzag")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run all layouts this many times, interleaved, and keep each layout's fastest round "
        "(on a shared machine, other load only ever adds time)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per layout")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per layout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = BenchConfig(
        seq_len=args.seq_len,
        ranks=args.ranks,
        heads=args.heads,
        kv_heads=args.kv_heads,
        head_dim=args.head_dim,
        ttt=args.ttt,
        dtype=args.dtype,
        device=args.device,
        iters=args.iters,
        warmup=args.warmup,
        threads=args.threads,
    )
    specs = select_layouts(layouts_for(cfg), args.layouts)
    rows = best_of_rounds(specs, args.rounds, lambda spec: run_layout(cfg, spec, args.timeout), args.json)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'layout':<14}{'step_s':>9}{'ratio':>7}{'comm_s':>9}{'peak MiB':>10}  compute_s per rank")
        for r in rows:
            print(
                f"{r['layout']:<14}{r['step_s']:>9.3f}{r['ratio_to_dp']:>7.2f}{r['comm_s']:>9.3f}"
                f"{r['peak_mem_bytes'] / 2**20:>10.1f}  {r['rank_compute_s']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
