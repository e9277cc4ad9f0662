"""Single-device reference attention of the EAGLE-3 TTT unroll: the oracle for every test.

Plain tensors, an explicit causal + diagonal mask, one fp32 softmax. Slow and memory hungry on
purpose: nothing here is clever, so it can be trusted.

Layout everywhere in `longdraft`: ``[batch, heads, seq, head_dim]``.
At TTT step ``k`` the query at position ``t`` attends to the step-0 keys ``0..t`` (causal) and to
the key of every later step ``1..k`` at exactly position ``t`` (diagonal).
"""

from __future__ import annotations

import math

import torch

from longdraft.attention.heads import repeat_kv


def ttt_attention_reference(
    q: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of the queries of one TTT step.

    q: ``[B, Hq, T, D]``; ``keys[0]``/``values[0]``: the step-0 keys ``[B, Hkv, T, D]`` (causal);
    ``keys[j]``/``values[j]`` for ``j >= 1``: keys of step ``j`` (diagonal only).
    Returns ``[B, Hq, T, D]`` in the dtype of ``q``.
    """
    if len(keys) != len(values) or not keys:
        raise ValueError(f"need the same non-zero number of key and value blocks, got {len(keys)} and {len(values)}")
    batch, n_heads, seq, head_dim = q.shape
    n_rep = n_heads // keys[0].shape[1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    qf = q.float()
    k0 = repeat_kv(keys[0], n_rep).float()
    v0 = repeat_kv(values[0], n_rep).float()
    causal_scores = torch.einsum("bhtd,bhsd->bhts", qf, k0) * scale
    causal = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    causal_scores = causal_scores.masked_fill(~causal, float("-inf"))
    diag_scores = [(qf * repeat_kv(k, n_rep).float()).sum(-1, keepdim=True) * scale for k in keys[1:]]
    probs = torch.softmax(torch.cat([causal_scores, *diag_scores], dim=-1), dim=-1)
    out = torch.einsum("bhts,bhsd->bhtd", probs[..., :seq], v0)
    for j, v in enumerate(values[1:]):
        out = out + probs[..., seq + j : seq + j + 1] * repeat_kv(v, n_rep).float()
    return out.to(q.dtype)
