"""The target's final RMSNorm, for engines that capture the residual stream before it (vLLM)."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, kind: str = "weight") -> torch.Tensor:
    """The target's final RMSNorm as HF computes it, fp32 statistics (``kind`` from `TargetSpec`):
    ``weight``: Llama/Qwen's ``w·x̂``, the normalised value cast back before the product;
    ``one_plus_weight``: Gemma's ``(1 + w)·x̂``, the product in fp32, then cast.
    ``weight`` is read on the CPU from the checkpoint while ``x`` sits where the engine keeps its cache
    (a GPU): it follows ``x`` (a no-op once the caller keeps it there)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if kind == "weight":
        return weight.to(device=x.device, dtype=x.dtype) * h.to(x.dtype)
    if kind == "one_plus_weight":
        return (h * (1.0 + weight.to(device=x.device).float())).to(x.dtype)
    raise ValueError(f"final norm kind {kind!r}: expected weight or one_plus_weight")
