"""The target's final RMSNorm, for engines that capture the residual stream before it (vLLM)."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The target's final RMSNorm, computed as HF Llama/Qwen do (fp32 statistics). ``weight`` is read
    on the CPU from the checkpoint while ``x`` sits where the engine keeps its cache (a GPU): it
    follows ``x`` (a no-op once the caller keeps it there)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(device=x.device, dtype=x.dtype) * h.to(x.dtype)
