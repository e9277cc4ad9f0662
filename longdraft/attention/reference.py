"""Single-device reference attention of the EAGLE-3 TTT unroll: the oracle for every test.

Plain tensors, an explicit causal + diagonal mask, one fp32 softmax. Slow and memory hungry on
purpose: nothing here is clever, so it can be trusted.

Layout everywhere in `longdraft`: ``[batch, heads, seq, head_dim]``.
At TTT step ``k`` the query at position ``t`` attends to the step-0 keys ``0..t`` (causal) and to
the key of every later step ``1..k`` at exactly position ``t`` (diagonal). With documents (the
lengths of a packed row, in order; positions past their sum are tail padding, one more document)
a query sees only step-0 keys of its own document; with a ``window`` only those with ``t - s < window``.
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
    doc_lengths: tuple[int, ...] | None = None,
    window: int | None = None,
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
    causal_scores = causal_scores.masked_fill(~step0_mask(seq, doc_lengths, window, q.device), float("-inf"))
    diag_scores = [(qf * repeat_kv(k, n_rep).float()).sum(-1, keepdim=True) * scale for k in keys[1:]]
    probs = torch.softmax(torch.cat([causal_scores, *diag_scores], dim=-1), dim=-1)
    out = torch.einsum("bhts,bhsd->bhtd", probs[..., :seq], v0)
    for j, v in enumerate(values[1:]):
        out = out + probs[..., seq + j : seq + j + 1] * repeat_kv(v, n_rep).float()
    return out.to(q.dtype)


def step0_mask(
    seq: int, doc_lengths: tuple[int, ...] | None = None, window: int | None = None, device=None
) -> torch.Tensor:
    """Bool ``[seq, seq]``: query ``t`` (row) may attend to step-0 key ``s`` (column)."""
    allowed = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    if doc_lengths is not None:
        if sum(doc_lengths) > seq:
            raise ValueError(f"documents {tuple(doc_lengths)} hold more than the row's {seq} positions")
        doc = torch.full((seq,), len(doc_lengths), dtype=torch.int64, device=device)  # tail padding
        start = 0
        for i, n in enumerate(doc_lengths):
            doc[start : start + n] = i
            start += n
        allowed &= doc.unsqueeze(1) == doc.unsqueeze(0)
    if window is not None:
        pos = torch.arange(seq, device=device)
        allowed &= (pos.unsqueeze(1) - pos.unsqueeze(0)) < window
    return allowed
