"""Which ring mode a run uses: ``auto`` gathers the step-0 K/V when they fit a memory estimate.

The decision picks collectives (all-gather or ring rotation), so every rank must make the same
one: ``agreed_ring_mode`` takes the smallest device budget over the ranks (one MIN all-reduce at
start-up), never one rank's own.
"""

from __future__ import annotations

import torch

from longdraft.attention.choice import choose_ring_mode
from longdraft.parallel.agree import agree_min
from longdraft.sharding.layout import ShardGrid

CPU_BUDGET_BYTES = 1 << 30


def gathered_kv_bytes(training, target, precision: str = "fp32") -> int:
    """Bytes one rank holds for the gathered step-0 K/V of the longest sample, with their fp32
    gradients (``training``: the run's training section; ``target``: its `TargetSpec`, the draft's
    heads; ``precision``: fp32 or bf16)."""
    kv_heads, head_dim = target.num_kv_heads, target.head_dim
    u = training.sp_ulysses_size
    kv_per_rank = max(kv_heads, u) // u  # KV heads are replicated when fewer than U
    padded = ShardGrid.from_training(training).for_length(training.max_seq_length).padded_length
    itemsize = 2 if precision == "bf16" else 4
    return 2 * kv_per_rank * padded * head_dim * (itemsize + 4)


def local_budget_bytes(device: torch.device) -> int:
    """This rank's own budget for the gathered K/V: 5% of its device's memory (1 GiB on CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 20
    return CPU_BUDGET_BYTES


def ring_mode_for(training, target, precision: str, budget_bytes: int) -> str:
    """``training.ring_mode`` with ``auto`` resolved against ``budget_bytes`` (already agreed):
    ``gather`` when the gathered K/V fit, else ``ring``."""
    return choose_ring_mode(training.ring_mode, gathered_kv_bytes(training, target, precision), budget_bytes)


def agreed_ring_mode(
    training, target, precision: str, device: torch.device, group=None, local_budget: int | None = None
) -> str:
    """The ring mode every rank of ``group`` uses. ``auto``: decided from the smallest budget over
    the ranks (a collective every rank issues, since the config is the same on all); an explicit
    mode needs no agreement. ``local_budget`` (default: ``local_budget_bytes(device)``) is this
    rank's own."""
    if training.ring_mode != "auto":
        return choose_ring_mode(training.ring_mode, 0, 0)
    budget = agree_min(local_budget_bytes(device) if local_budget is None else local_budget, device, group)
    return ring_mode_for(training, target, precision, budget)
