"""Which ring mode a run uses: ``auto`` gathers the step-0 K/V when they fit a memory estimate."""

from __future__ import annotations

import torch

from longdraft.attention.choice import choose_ring_mode
from longdraft.sharding.layout import ShardGrid


def gathered_kv_bytes(training, text_config, precision: str = "fp32") -> int:
    """Bytes one rank holds for the gathered step-0 K/V of the longest sample, with their fp32
    gradients (``training``: the run's training section; ``precision``: fp32 or bf16)."""
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    u = training.sp_ulysses_size
    kv_per_rank = max(kv_heads, u) // u  # KV heads are replicated when fewer than U
    padded = ShardGrid.from_training(training).for_length(training.max_seq_length).padded_length
    itemsize = 2 if precision == "bf16" else 4
    return 2 * kv_per_rank * padded * head_dim * (itemsize + 4)


def ring_mode_for(training, text_config, device: torch.device, precision: str) -> str:
    """``training.ring_mode`` with ``auto`` resolved: ``gather`` when the gathered K/V take at most
    5% of the device's memory (1 GiB on CPU), else ``ring``."""
    if device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory // 20
    else:
        budget = 1 << 30
    return choose_ring_mode(training.ring_mode, gathered_kv_bytes(training, text_config, precision), budget)
