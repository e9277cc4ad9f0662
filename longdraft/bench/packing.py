"""``longdraft bench packing``: packed against unpacked micro-batches on a realistic length mix, for
one device and for sequence parallelism over real gloo ranks, at tiny dims.

The mix (``length_mix``, shipped here so every run measures the same thing): lognormal lengths with
a median of 1,500 tokens, and 5 % of the samples long ones between 16K and 64K (log-uniform);
``--scale`` shrinks every length (a CPU run uses 1/16: median ~94, long ones 1K-4K). Each step
trains ``--batch`` samples of the mix, the same ones both ways:

- ``unpacked``: one device stacks ``--micro-batch-size`` samples per micro-batch (right-padded to
  the longest); with SP every sample is its own micro-batch split over the S ranks (today's rule).
- ``packed``: whole documents, longest first, in micro-batches of ``--tokens-per-micro-batch``
  (``sharding/packing.py``, as ``training.tokens_per_micro_batch`` does); with a ring (R > 1) each
  micro-batch's documents in the order that evens the ring ranks' work (``balanced_order``;
  ``--balance 0``: longest first).

Reported per (SP, mode): ``useful_fraction`` (real tokens / query slots computed, padding counted),
``step_s`` (slowest rank, summed over the measured steps), ``s_per_1k_tokens`` and
``tokens_per_s`` (trained tokens), ``micro_batches`` per step, ``attention_imbalance`` (per-rank
attention pairs, ``max / mean - 1``, mean over steps) and, for packed, ``speedup`` over unpacked.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class PackingBenchConfig:
    sp: str = "1,2,4"  # SP sizes to measure
    ulysses: int = 2  # Ulysses size when SP >= 2 (the rest is ring, zigzag)
    ring_mode: str = "gather"
    batch: int = 40  # samples per step
    steps: int = 3  # measured steps (each a fresh draw of the mix)
    warmup: int = 1
    scale: float = 1 / 16
    tokens_per_micro_batch: int = 0  # 0: the longest length the mix can draw (64K x scale)
    micro_batch_size: int = 4  # one device, unpacked
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 192
    draft_vocab: int = 512
    target_vocab: int = 2048
    ttt: int = 4
    seed: int = 0
    balance: int = 1  # packed, R > 1: order each micro-batch's documents to even the ring ranks' work

    @property
    def budget(self) -> int:
        return self.tokens_per_micro_batch or max(1, round(65536 * self.scale))


def length_mix(n: int, seed: int, scale: float = 1.0) -> list[int]:
    """``n`` sample lengths: 5 % (at least one when ``n >= 10``) log-uniform in [16K, 64K], the rest
    lognormal with median 1,500 (sigma 0.9) capped below 16K; every length times ``scale``, >= 1."""
    gen = torch.Generator().manual_seed(seed)
    n_long = round(0.05 * n)
    short = torch.exp(math.log(1500) + 0.9 * torch.randn(n - n_long, generator=gen)).clamp(16, 16383)
    long = torch.exp(math.log(16384) + math.log(4) * torch.rand(n_long, generator=gen))
    lengths = torch.cat([short, long])[torch.randperm(n, generator=gen)]
    return [max(1, round(float(x) * scale)) for x in lengths]


def _documents(lengths: list[int], cfg: PackingBenchConfig, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(0, cfg.target_vocab, (n,), generator=gen),
            "aux_hidden": torch.randn(n, 3 * cfg.hidden, generator=gen),
            "last_hidden": torch.randn(n, cfg.hidden, generator=gen),
        }
        for n in lengths
    ]


def _micro_batches(docs: list[dict], packed: bool, cfg: PackingBenchConfig, u: int, r: int, sp_rank: int) -> list:
    """This rank's micro-batches of the step's documents, every real position in the loss."""
    from longdraft.sharding.layout import ShardGrid
    from longdraft.sharding.packing import balanced_order, pack_features, plan_micro_batches
    from longdraft.sharding.reader import full_sequence_batch, read_shard
    from longdraft.sharding.split import split_sample

    lengths = [int(d["input_ids"].shape[0]) for d in docs]
    if not packed and u * r == 1:
        m = cfg.micro_batch_size
        return [
            full_sequence_batch(docs[j : j + m], [[0, n] for n in lengths[j : j + m]], cfg.ttt)
            for j in range(0, len(docs), m)
        ]
    grid = ShardGrid(u, r, cfg.ttt, "zigzag" if r > 1 else "contiguous")
    groups = plan_micro_batches(lengths, cfg.budget) if packed else [[i] for i in range(len(docs))]
    out = []
    for group in groups:
        if packed and cfg.balance:
            group = [group[i] for i in balanced_order([lengths[j] for j in group], grid)]
        layout = grid.for_documents([lengths[i] for i in group])
        shard = split_sample(pack_features([docs[i] for i in group]), layout)[sp_rank]
        out.append(read_shard(shard, layout, sp_rank, [0, layout.length]))
    return out


def _rank_bench(rank: int, world: int, cfg_dict: dict) -> dict:
    import torch.distributed as dist

    from longdraft.attention.factory import make_attention_backend
    from longdraft.bench.draft_inputs import bench_draft
    from longdraft.parallel.mesh import USPMesh
    from longdraft.parallel.reduction import SumReducer
    from longdraft.train.step import StepSettings, train_step

    cfg = PackingBenchConfig(**cfg_dict)
    u = min(cfg.ulysses, world) if world > 1 else 1
    r = world // u
    device = torch.device("cpu")
    model, head = bench_draft(
        cfg.hidden, cfg.heads, cfg.kv_heads, cfg.intermediate, cfg.draft_vocab, cfg.target_vocab, 65536, device
    )
    if world > 1:
        mesh = USPMesh.build(u, r, cfg.heads, cfg.kv_heads)
        backend = make_attention_backend(
            "usp",
            mesh=mesh,
            num_heads=cfg.heads,
            num_kv_heads=cfg.kv_heads,
            order="zigzag" if r > 1 else "contiguous",
            ring_mode=cfg.ring_mode,
        )
        reducer = SumReducer(dist.group.WORLD)
    else:
        backend, reducer = make_attention_backend("fast"), SumReducer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    settings = StepSettings(cfg.ttt, 1024, ulysses=u)
    totals = {
        mode: {"step_s": 0.0, "tokens": 0, "slots": 0, "micro_batches": 0, "imbalance": []}
        for mode in ("unpacked", "packed")
    }
    for step in range(cfg.warmup + cfg.steps):
        docs = _documents(length_mix(cfg.batch, cfg.seed + step, cfg.scale), cfg, cfg.seed + step)
        modes = ("unpacked", "packed") if step % 2 == 0 else ("packed", "unpacked")  # alternate: no order bias
        for mode in modes:
            batches = _micro_batches(docs, mode == "packed", cfg, u, r, rank)
            if reducer.group is not None:
                dist.barrier()
            start = time.perf_counter()
            metrics = train_step(model, batches, backend, head, optimizer, scheduler, settings, reducer)
            elapsed = reducer.max_numbers([time.perf_counter() - start])[0]  # the slowest rank's
            if step < cfg.warmup:
                continue
            t = totals[mode]
            t["step_s"] += elapsed
            t["tokens"] += int(reducer.sum_numbers([sum(b.query_tokens() for b in batches)])[0])
            t["slots"] += int(reducer.sum_numbers([sum(b.batch_size * b.positions.numel() for b in batches)])[0])
            t["micro_batches"] += len(batches)
            t["imbalance"].append(metrics["attention_imbalance"])
    return totals


def run_sp(cfg: PackingBenchConfig, sp: int, timeout_s: float) -> list[dict]:
    from longdraft.parallel.launch import run_ranks

    totals = run_ranks(_rank_bench, sp, (asdict(cfg),), timeout_s=timeout_s)[0]
    u = min(cfg.ulysses, sp) if sp > 1 else 1
    rows = []
    for mode, t in totals.items():
        rows.append(
            {
                "sp": sp,
                "layout": "one device" if sp == 1 else f"U{u}R{sp // u}" + ("-zigzag" if sp > u else ""),
                "mode": mode,
                "useful_fraction": round(t["tokens"] / t["slots"], 4),
                "step_s": round(t["step_s"] / cfg.steps, 4),
                "s_per_1k_tokens": round(1000 * t["step_s"] / t["tokens"], 5),
                "tokens_per_s": round(t["tokens"] / t["step_s"], 1),
                "micro_batches": t["micro_batches"] / cfg.steps,
                "attention_imbalance": round(sum(t["imbalance"]) / len(t["imbalance"]), 4),
            }
        )
    rows[1]["speedup"] = round(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], 3)
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longdraft bench packing", description=__doc__.split("\n")[0])
    d = PackingBenchConfig()
    for name, value in asdict(d).items():
        kind = type(value) if not isinstance(value, bool) else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per SP size")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per (SP, mode)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = PackingBenchConfig(**{k: getattr(args, k) for k in asdict(PackingBenchConfig())})
    rows = []
    for sp in (int(x) for x in cfg.sp.split(",")):
        rows += run_sp(cfg, sp, args.timeout)
    if args.json:
        print(json.dumps({"config": asdict(cfg), "budget": cfg.budget, "rows": rows}, indent=1))
        return 0
    print(
        f"{'layout':<16}{'mode':<10}{'useful':>8}{'step_s':>9}{'s/1k tok':>10}{'tok/s':>9}{'mb':>6}{'imbal':>7}{'speedup':>9}"
    )
    for r in rows:
        print(
            f"{r['layout']:<16}{r['mode']:<10}{r['useful_fraction']:>8.3f}{r['step_s']:>9.3f}{r['s_per_1k_tokens']:>10.4f}"
            f"{r['tokens_per_s']:>9.0f}{r['micro_batches']:>6.1f}{r['attention_imbalance']:>7.3f}{r.get('speedup', ''):>9}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
