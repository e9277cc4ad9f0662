"""``plan``: one training step of rank r of a world of N on this device, estimated and/or measured.

Estimate: the real step under fake tensors (``estimate_mode.py``), seconds, no allocation. Measure:
the real step on the planned device, timed (collectives return at once, so the time has no
communication in it), then run again under the memory tracker. ``auto`` estimates, then measures
when the planned device is here and the estimate fits it (on CPU: only small steps, a big one would
take too long). Each number carries the method that produced it.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch.distributed._tools.mem_tracker import _MemRefType

from longdraft.config import Config
from longdraft.device import resolve_device
from longdraft.errors import UserError
from longdraft.pipeline.sizes import sample_sizes
from longdraft.plan.estimate_mode import PlanFakeMode
from longdraft.plan.fake_world import ZeroFilledReceives, fake_world
from longdraft.plan.memory import StepMemTracker
from longdraft.plan.parts import PlanParts, build_plan_parts
from longdraft.plan.step_call import run_train_step

GiB = 1 << 30
CUDA_RESERVE = GiB  # CUDA context and allocator slack, outside the tracked tensors
CPU_MEASURE_LIMIT = 2 * GiB  # auto measures a CPU step only below this estimated peak
ESTIMATE = "estimate: FakeTensorMode + MemTracker (no allocation)"
MEASURE_CPU = "measured: MemTracker over real tensors (live tensor bytes; CPU has no allocator peak)"
MEASURE_CUDA = "measured: MemTracker over real tensors; allocator_peak: torch.cuda.max_memory_allocated"
METHODS = ("auto", "estimate", "measure", "both")


def device_memory(planned: torch.device, override_gib: float | None) -> tuple[int, str]:
    if override_gib:
        return int(override_gib * GiB), "--device-memory-gib"
    if planned.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(planned).total_memory, torch.cuda.get_device_name(planned)
    if planned.type == "cuda":
        return 80 * GiB, "assumed 80 GiB (no GPU here; set --device-memory-gib)"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_step(parts: PlanParts, device: torch.device) -> tuple[float, dict]:
    _sync(device)
    start = time.perf_counter()
    with ZeroFilledReceives():
        metrics = run_train_step(parts)
    _sync(device)
    return time.perf_counter() - start, metrics


def _tracked_step(parts: PlanParts, device: torch.device) -> tuple[dict, dict]:
    groups = [(parts.mesh.ulysses_group, "ulysses"), (parts.mesh.ring_group, "ring"), (dist.group.WORLD, "world")]
    tracker = StepMemTracker(groups)
    tracker.track_external(parts.model, parts.optimizer, parts.head)

    def label_shard(batch) -> None:  # the device copies of the micro-batches: inputs, not activations
        for t in vars(batch).values():
            if isinstance(t, torch.Tensor):
                tracker._update_and_maybe_create_winfos(t, _MemRefType.OTH)

    with tracker, ZeroFilledReceives():
        run_train_step(parts, label_shard)
    by_kind = tracker.peak_by_kind(device)
    head = parts.head.numel() * parts.head.element_size()
    by_kind["shards"] = by_kind.pop("inputs") - head  # the micro-batches on the device at the peak
    by_kind["weights"] += head  # the frozen target head
    return by_kind, dict(tracker.collective_bytes)


def _estimate(cfg: Config, planned: torch.device, memory: int) -> tuple[dict, PlanParts]:
    start = time.perf_counter()
    with PlanFakeMode():
        parts = build_plan_parts(cfg, torch.device("cpu"), planned, memory, random_weights=True)
        peak, collectives = _tracked_step(parts, torch.device("cpu"))
    seconds = round(time.perf_counter() - start, 2)
    return {"method": ESTIMATE, "peak_bytes": peak, "collective_bytes": collectives, "seconds": seconds}, parts


def _measure(cfg: Config, planned: torch.device, memory: int, random_weights: bool) -> tuple[dict, PlanParts]:
    parts = build_plan_parts(cfg, planned, planned, memory, random_weights)
    warmups = 1 if planned.type == "cuda" else 0  # the first CUDA step pays for kernel set-up
    for _ in range(warmups):
        with ZeroFilledReceives():
            run_train_step(parts)
    if planned.type == "cuda":
        torch.cuda.reset_peak_memory_stats(planned)
    step_s, metrics = _timed_step(parts, planned)
    allocator = torch.cuda.max_memory_allocated(planned) if planned.type == "cuda" else None
    peak, collectives = _tracked_step(parts, planned)
    return {
        "method": MEASURE_CUDA if planned.type == "cuda" else MEASURE_CPU,
        "peak_bytes": peak,
        "allocator_peak_bytes": allocator,
        "collective_bytes": collectives,
        "step_time_s": round(step_s, 4),
        "loss": metrics["loss"],
    }, parts


def _should_measure(method: str, planned: torch.device, estimate: dict | None, memory: int) -> tuple[bool, str]:
    if method in ("measure", "both"):
        if planned.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--method {method}: training.device is cuda but no GPU is visible here")
        return True, ""
    if method == "estimate":
        return False, "--method estimate"
    if planned.type == "cuda" and not torch.cuda.is_available():
        return False, "no GPU here"
    total = estimate["peak_bytes"]["total"]
    if total + (CUDA_RESERVE if planned.type == "cuda" else 0) > memory:
        return False, "the estimated peak does not fit the device"
    if planned.type == "cpu" and total > CPU_MEASURE_LIMIT:
        return False, f"estimated peak above {CPU_MEASURE_LIMIT // GiB} GiB on CPU: a real step would take too long"
    return True, ""


def plan(
    cfg: Config,
    world: int,
    rank: int,
    *,
    random_weights: bool = False,
    method: str = "auto",
    device_memory_gib: float | None = None,
    config_path: str = "",
) -> dict:
    if method not in METHODS:
        raise UserError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    t = cfg.training
    # A CUDA plan on a machine without a GPU is estimated for that device, never run on it.
    no_gpu_here = t.device == "cuda" and not torch.cuda.is_available()
    planned = torch.device("cuda") if no_gpu_here else resolve_device(t.device)
    memory, memory_source = device_memory(planned, device_memory_gib)
    estimate = measured = None
    with fake_world(world, rank):
        if method != "measure":
            estimate, parts = _estimate(cfg, planned, memory)
        do_measure, why_not = _should_measure(method, planned, estimate, memory)
        if do_measure:
            measured, parts = _measure(cfg, planned, memory, random_weights)
    best = measured or estimate
    peak = max(best["peak_bytes"]["total"], (measured or {}).get("allocator_peak_bytes") or 0)
    total = peak + (CUDA_RESERVE if planned.type == "cuda" else 0)
    c = parts.mesh.coords
    return {
        "config": config_path,
        "world": world,
        "rank": rank,
        "layout": f"DP{len(parts.mesh.dp_ranks)} x U{t.sp_ulysses_size} x R{t.sp_ring_size}",
        "coords": {"dp": c.dp, "ring": c.ring, "ulysses": c.ulysses},
        "seq_len": t.max_seq_length,
        "local_queries_per_sample": len(parts.batches[0].positions),
        "micro_batches": len(parts.batches),
        "micro_batch_size": t.micro_batch_size,
        "attention": cfg.attention_backend,
        "ring_mode": parts.ring_mode if t.sp_ring_size > 1 else None,
        "shard_order": t.shard_order,
        "planned_device": planned.type,
        "precision": parts.settings.precision,
        "weights": "checkpoint" if measured and not random_weights else "random, shapes from config.json",
        "device_memory_bytes": memory,
        "device_memory_source": memory_source,
        "estimate": estimate,
        "measured": measured,
        "measured_skipped": None if measured else why_not,
        "step_time_s": measured["step_time_s"] if measured else None,
        "collective_bytes": best["collective_bytes"],
        "store_bytes_per_sample": sample_sizes(cfg).sample_bytes(t.max_seq_length),
        "micro_batch_shard_bytes": parts.micro_batch_bytes(),
        "host_bytes": parts.host_bytes(cfg),
        "fits": total <= memory,
        "fits_from": "measured" if measured else "estimate",
        "notes": _notes(t, planned, parts.ring_mode),
    }


def _notes(t, planned: torch.device, ring_mode: str) -> list[str]:
    notes = [
        "collectives run on torch's fake process group: they return at once, so the step time has no communication; "
        "bytes are what this rank would send",
        "worst case for memory: every sample max_seq_length tokens, every position in the loss",
    ]
    if t.sp_ring_size > 1 and ring_mode == "ring":
        notes.append("ring send/recv complete without data under the fake group; their receive buffers are zero-filled")
    if planned.type == "cuda":
        notes.append(f"fits: peak + {CUDA_RESERVE // GiB} GiB (CUDA context, allocator slack) <= device memory")
    return notes
