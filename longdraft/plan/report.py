"""The plan as a table (default) or JSON."""

from __future__ import annotations

import json

MiB = 1 << 20
KIND_ORDER = ("weights", "gradients", "optimizer", "activations", "communication", "shards", "total")


def _gib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / MiB:.1f} MiB"


def _mib(n: int) -> str:
    return f"{n / MiB:,.1f} MiB"


def to_json(plan: dict) -> str:
    return json.dumps(plan, indent=1)


def to_table(plan: dict) -> str:
    lines = [
        f"plan: {plan['config']}  rank {plan['rank']} of {plan['world']}  ({plan['layout']}, "
        f"coords dp={plan['coords']['dp']} ring={plan['coords']['ring']} ulysses={plan['coords']['ulysses']})",
        f"  {plan['seq_len']} tokens per sample, {plan['local_queries_per_sample']} queries on this rank, "
        f"{plan['micro_batches']} micro-batch(es) of {plan['micro_batch_size']}; attention {plan['attention']}"
        + (f", ring {plan['ring_mode']} ({plan['shard_order']})" if plan["ring_mode"] else "")
        + f"; {plan['planned_device']} {plan['precision']}; weights: {plan['weights']}",
        "",
    ]
    columns = [(name, plan[name]) for name in ("estimate", "measured") if plan[name]]
    lines.append(f"  {'peak memory by kind':<22}" + "".join(f"{name:>16}" for name, _ in columns))
    for kind in KIND_ORDER:
        lines.append(f"  {kind:<22}" + "".join(f"{_gib(col['peak_bytes'][kind]):>16}" for _, col in columns))
    measured = plan["measured"]
    if measured and measured.get("allocator_peak_bytes") is not None:
        lines.append(f"  {'allocator peak':<22}{'':>16}{_gib(measured['allocator_peak_bytes']):>16}")
    for _, col in columns:
        lines.append(f"  {col['method']}")
    if not measured:
        lines.append(f"  not measured: {plan['measured_skipped']}")
    step = plan["step_time_s"]
    lines += [
        "",
        f"  step time (no communication): {'-' if step is None else f'{step:.3f} s (measured)'}",
        "  bytes each collective would send per step (this rank):",
    ]
    for kind, nbytes in sorted(plan["collective_bytes"].items()):
        lines.append(f"    {kind:<24}{_mib(nbytes):>16}")
    lines += [
        f"  store bytes per sample: {_mib(plan['store_bytes_per_sample'])} (pipeline/sizes.py); "
        f"one micro-batch's shard on this rank: {_mib(plan['micro_batch_shard_bytes'])}",
        "  host memory of this rank (shards wait there; the device holds the micro-batch being trained "
        "and, on CUDA, the next one): "
        + ", ".join(f"{k.replace('_', ' ')} {_gib(v)}" for k, v in plan["host_bytes"].items()),
        f"  device memory: {_gib(plan['device_memory_bytes'])} ({plan['device_memory_source']}); "
        f"fits: {'yes' if plan['fits'] else 'NO'} (from the {plan['fits_from']} peak)",
    ]
    lines += [f"  note: {note}" for note in plan["notes"]]
    return "\n".join(lines)
