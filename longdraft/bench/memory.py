"""``longdraft bench memory``: the longest sequence one training step fits in a per-rank budget.

For each SP size S, S ranks (gloo on CPU) run forward + backward of the draft's TTT unroll with
USP attention on one sequence split by the shard contract, and binary-search the length L whose
per-rank peak memory stays within the budget. All ranks probe the same L and agree on the outcome
through an all-reduce, so the search runs in lockstep.

Memory per rank: on CUDA ``max_memory_allocated`` above the allocation before the step; on CPU the
peak resident set above the resident set before the step (``/proc/self/status`` VmHWM, reset
through ``/proc/self/clear_refs``), with glibc told to return every large block to the system so
freed tensors leave the resident set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

MIB = 1 << 20


@dataclass
class MemoryBenchConfig:
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    draft_vocab: int = 1024
    target_vocab: int = 4096
    ttt_length: int = 7
    budget_bytes: int = 96 * MIB
    fixed_len: int = 1024
    min_len: int = 256
    max_len: int = 1 << 20
    resolution: float = 0.02  # stop when hi/lo - 1 is below this
    checkpointing: bool = False
    loss_chunk: int = 1024
    device: str = "cpu"

    @classmethod
    def realistic(cls) -> MemoryBenchConfig:
        """A Llama-3-8B-sized draft (GPU)."""
        return cls(
            hidden=4096,
            heads=32,
            kv_heads=8,
            intermediate=14336,
            draft_vocab=32000,
            target_vocab=128256,
            budget_bytes=40 << 30,
            fixed_len=8192,
            min_len=4096,
            resolution=0.05,
            device="cuda",
        )


def _read_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


class PeakMeter:
    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident set to the current one
            self.base = _read_status("VmRSS")

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return _read_status("VmHWM") - self.base


def _model(cfg: MemoryBenchConfig, device):
    from longdraft.bench.draft_inputs import bench_draft

    return bench_draft(
        cfg.hidden,
        cfg.heads,
        cfg.kv_heads,
        cfg.intermediate,
        cfg.draft_vocab,
        cfg.target_vocab,
        cfg.max_len * 2,
        device,
    )


def _shard(cfg: MemoryBenchConfig, length: int, sp: int, sp_rank: int, device, dtype):
    from longdraft.bench.draft_inputs import bench_shard
    from longdraft.sharding.layout import ShardLayout

    return bench_shard(ShardLayout(length, sp, 1, cfg.ttt_length), sp_rank, cfg.hidden, cfg.target_vocab, device, dtype)


def _step_peak(cfg, model, head, backend, length, sp, sp_rank, device) -> tuple[int, bool]:
    """Per-rank peak bytes of one forward+backward at ``length``; (peak, ok) where ok=False on OOM."""
    from longdraft.model.ttt import step_valid_masks, target_ok, ttt_unroll
    from longdraft.train.step import autocast_for

    meter = PeakMeter(device)
    meter.start()
    try:
        batch = _shard(cfg, length, sp, sp_rank, device, head.dtype)
        valid = step_valid_masks(batch, target_ok(batch, head, model.t2d, cfg.loss_chunk), cfg.ttt_length)
        counts = torch.stack([v.sum() for v in valid]).clamp(min=1).float()
        with autocast_for("bf16" if device.type == "cuda" else "fp32", device):
            result = ttt_unroll(
                model, batch, valid, counts, head[model.draft_to_target], backend, cfg.loss_chunk, cfg.checkpointing
            )
        result.loss.backward()
        ok = True
    except torch.cuda.OutOfMemoryError:
        ok = False
    peak = meter.peak()
    model.zero_grad(set_to_none=True)
    del meter
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return peak, ok


def _rank_search(rank: int, world: int, cfg: MemoryBenchConfig) -> dict:
    from longdraft.attention.factory import make_attention_backend
    from longdraft.parallel.mesh import USPMesh

    device = torch.device(cfg.device, rank) if cfg.device == "cuda" else torch.device("cpu")
    model, head = _model(cfg, device)
    mesh = USPMesh.build(world, 1, cfg.heads, cfg.kv_heads)
    backend = make_attention_backend(mesh=mesh, num_heads=cfg.heads, num_kv_heads=cfg.kv_heads)

    def probe(length: int) -> tuple[bool, int]:
        peak, ok = _step_peak(cfg, model, head, backend, length, world, rank, device)
        agg = torch.tensor([peak, 0 if ok else 1], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(agg, op=dist.ReduceOp.MAX)
        worst = int(agg[0])
        return worst <= cfg.budget_bytes and agg[1] == 0, worst

    start = time.perf_counter()
    _, fixed_peak = probe(cfg.fixed_len)
    fixed_step_s = time.perf_counter() - start  # includes building the shard; the first probe also warms up
    lo, hi = 0, None
    length = cfg.min_len * world
    while hi is None and length <= cfg.max_len:
        fits, _ = probe(length)
        if fits:
            lo, length = length, length * 2
        else:
            hi = length
    if hi is None:
        hi = cfg.max_len
    while lo and hi / lo - 1 > cfg.resolution:
        mid = (lo + hi) // 2
        fits, _ = probe(mid)
        lo, hi = (mid, hi) if fits else (lo, mid)
    return {"max_seq_len": lo, "peak_mem_bytes_fixed_len": fixed_peak, "step_s_fixed_len": fixed_step_s}


def run_memory_bench(cfg: MemoryBenchConfig, sp_sizes: list[int], timeout_s: float = 1800) -> list[dict]:
    from longdraft.parallel.launch import run_ranks

    # Large blocks straight from mmap and back on free, so the resident set tracks live tensors.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    rows = []
    for sp in sp_sizes:
        backend = "nccl" if cfg.device == "cuda" else "gloo"
        result = run_ranks(_rank_search, sp, (cfg,), timeout_s=timeout_s, backend=backend)[0]
        rows.append(
            {
                "sp": sp,
                **result,
                "budget_bytes": cfg.budget_bytes,
                "fixed_len": cfg.fixed_len,
                "peak_mem_kind": "cuda_max_allocated" if cfg.device == "cuda" else "cpu_peak_rss_delta",
            }
        )
    base = rows[0]["max_seq_len"] if rows and rows[0]["sp"] == 1 else None
    base_mem = rows[0]["peak_mem_bytes_fixed_len"] if base else None
    for row in rows:
        row["ratio_to_sp1"] = row["max_seq_len"] / base if base else None
        row["fixed_len_mem_ratio_to_sp1"] = row["peak_mem_bytes_fixed_len"] / base_mem if base_mem else None
    return rows


def plot_rows(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    sps = [r["sp"] for r in rows]
    a.plot(sps, [r["max_seq_len"] for r in rows], "o-", label="measured")
    if rows and rows[0]["sp"] == 1:
        a.plot(sps, [rows[0]["max_seq_len"] * s for s in sps], "--", label="S x SP=1 (ideal)")
    a.set(xlabel="SP size", ylabel="max sequence length", title=f"budget {rows[0]['budget_bytes'] / MIB:.0f} MiB/rank")
    a.legend()
    b.plot(sps, [r["peak_mem_bytes_fixed_len"] / MIB for r in rows], "o-")
    b.set(xlabel="SP size", ylabel="MiB per rank", title=f"peak at L={rows[0]['fixed_len']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longdraft bench memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sp", type=int, nargs="+", default=[1, 2, 4], help="SP sizes (Ulysses) to measure")
    parser.add_argument("--budget-mb", type=float, help="per-rank memory budget in MiB")
    parser.add_argument("--fixed-len", type=int, help="length for the per-rank peak-memory comparison")
    parser.add_argument("--realistic", action="store_true", help="Llama-3-8B-sized draft (for a GPU)")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the TTT steps")
    parser.add_argument("--json", action="store_true", help="print only the JSON list")
    parser.add_argument("--plot", help="write a PNG plot here")
    args = parser.parse_args(argv)
    cfg = MemoryBenchConfig.realistic() if args.realistic else MemoryBenchConfig()
    if args.budget_mb:
        cfg.budget_bytes = int(args.budget_mb * MIB)
    if args.fixed_len:
        cfg.fixed_len = args.fixed_len
    cfg.checkpointing = args.checkpointing
    rows = run_memory_bench(cfg, args.sp)
    if args.plot:
        plot_rows(rows, args.plot)
    if not args.json:
        print(json.dumps(asdict(cfg)), file=sys.stderr)
        for r in rows:
            print(
                f"SP={r['sp']}: max length {r['max_seq_len']} (x{r['ratio_to_sp1']:.2f} of SP=1), "
                f"peak at L={r['fixed_len']}: {r['peak_mem_bytes_fixed_len'] / MIB:.1f} MiB",
                file=sys.stderr,
            )
    print(json.dumps(rows, indent=None if args.json else 2))
    return 0
