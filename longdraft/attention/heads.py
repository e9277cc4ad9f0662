"""Grouped-query attention helpers: expand KV heads to query heads, and sum their gradients back."""

from __future__ import annotations

import torch


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Expand ``[B, Hkv, T, D]`` to ``[B, Hkv * n_rep, T, D]`` (query head h uses KV head h // n_rep)."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)


def sum_kv_groups(grad: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """Reverse of ``repeat_kv``: sum the gradients of the query heads that share a KV head."""
    batch, n_heads, seq, dim = grad.shape
    if n_heads == n_kv_heads:
        return grad
    return grad.view(batch, n_kv_heads, n_heads // n_kv_heads, seq, dim).sum(dim=2)
