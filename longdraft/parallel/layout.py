"""Which global query positions each sequence-parallel rank holds, in the argument style of the
attention code and its tests; the formulas live in the shard contract (``longdraft/shard.py``).

``L`` is the global length, ``S = U * R``; SP rank ``r = ring * U + ulysses``.

- ``contiguous``: ``C = ceil(L / S)``; rank ``r`` holds ``[r*C, (r+1)*C)``. After the Ulysses
  all-to-all, ring rank ``q`` holds ``[q*U*C, (q+1)*U*C)``.
- ``zigzag``: the sequence is cut into ``2R`` chunks of ``U*c`` tokens, ``c = ceil(L / (2S))``;
  ring rank ``q`` holds chunks ``q`` and ``2R-1-q`` and, inside each chunk, Ulysses rank ``u``
  holds sub-block ``u`` (``c`` tokens). SP rank ``(q, u)`` stores its two segments one after the
  other (local length ``2c``). This balances the causal work over the ring.

Positions ``>= L`` are tail padding; they only ever sit at the global tail, so causal masking keeps
them away from real queries.
"""

from __future__ import annotations

import torch

from longdraft.shard import LAYOUTS, ShardLayout  # noqa: F401  (LAYOUTS re-exported)


def _layout(seq_len: int, ulysses_size: int, ring_size: int, layout: str) -> ShardLayout:
    """The shard contract without look-ahead rows: the query part of every shard."""
    return ShardLayout(seq_len, ulysses_size, ring_size, 0, layout)


def segment_length(seq_len: int, ulysses_size: int, ring_size: int, layout: str) -> int:
    """Tokens per contiguous segment of one SP rank: ``C`` (contiguous) or ``c`` (zigzag, 2 segments)."""
    return _layout(seq_len, ulysses_size, ring_size, layout).segment_queries


def local_length(seq_len: int, ulysses_size: int, ring_size: int, layout: str) -> int:
    """Number of query positions each SP rank holds (the same on every rank)."""
    return _layout(seq_len, ulysses_size, ring_size, layout).local_queries


def padded_length(seq_len: int, ulysses_size: int, ring_size: int, layout: str) -> int:
    return _layout(seq_len, ulysses_size, ring_size, layout).padded_length


def query_positions(seq_len: int, ulysses_size: int, ring_size: int, sp_rank: int, layout: str) -> torch.Tensor:
    """Global positions (int64, local order) of SP rank ``sp_rank``'s queries; values ``>= L`` are padding."""
    return _layout(seq_len, ulysses_size, ring_size, layout).query_positions(sp_rank)


def ring_positions(seq_len: int, ulysses_size: int, ring_size: int, ring_rank: int, layout: str) -> torch.Tensor:
    """Global positions held by ring rank ``ring_rank`` after the all-to-all, in the order the USP
    backend computes in: contiguous ``[q*U*C, (q+1)*U*C)``; zigzag ``[chunk q | chunk 2R-1-q]``."""
    return _layout(seq_len, ulysses_size, ring_size, layout).ring_positions(ring_rank)


def scatter_sequence(
    full: torch.Tensor, ulysses_size: int, ring_size: int, layout: str, dim: int = 1
) -> list[torch.Tensor]:
    """Split a full ``[..., L, ...]`` tensor (sequence at ``dim``) into the S local tensors, zero tail padding."""
    seq_len = full.shape[dim]
    total = padded_length(seq_len, ulysses_size, ring_size, layout)
    pad_shape = list(full.shape)
    pad_shape[dim] = total - seq_len
    padded = torch.cat([full, full.new_zeros(pad_shape)], dim=dim)
    return [
        padded.index_select(dim, query_positions(seq_len, ulysses_size, ring_size, r, layout).to(full.device))
        for r in range(ulysses_size * ring_size)
    ]


def gather_sequence(
    shards: list[torch.Tensor], seq_len: int, ulysses_size: int, ring_size: int, layout: str, dim: int = 1
) -> torch.Tensor:
    """Inverse of ``scatter_sequence``: rebuild ``[..., L, ...]`` and drop the tail padding."""
    sp_size = ulysses_size * ring_size
    if len(shards) != sp_size:
        raise ValueError(f"need {sp_size} shards for U={ulysses_size}, R={ring_size}, got {len(shards)}")
    positions = torch.cat(
        [query_positions(seq_len, ulysses_size, ring_size, r, layout) for r in range(sp_size)]
    ).to(shards[0].device)
    stacked = torch.cat(shards, dim=dim)
    order = torch.argsort(positions)
    return stacked.index_select(dim, order).narrow(dim, 0, seq_len)
