"""Test-side views of the shard contract in the argument style of the attention tests: the
positions each rank holds, and scatter/gather of a whole sequence (the oracle's side)."""

from __future__ import annotations

import torch

from longdraft.choices import SHARD_ORDERS  # noqa: F401  (re-exported for the tests)
from longdraft.sharding.header import ShardMismatchError
from longdraft.sharding.layout import ShardLayout


def _layout(seq_len: int, ulysses_size: int, ring_size: int, order: str) -> ShardLayout:
    """The shard contract without look-ahead rows: the query part of every shard."""
    return ShardLayout(seq_len, ulysses_size, ring_size, 0, order)


def local_length(seq_len, ulysses_size, ring_size, order) -> int:
    return _layout(seq_len, ulysses_size, ring_size, order).local_queries


def padded_length(seq_len, ulysses_size, ring_size, order) -> int:
    return _layout(seq_len, ulysses_size, ring_size, order).padded_length


def query_positions(seq_len, ulysses_size, ring_size, sp_rank, order) -> torch.Tensor:
    return _layout(seq_len, ulysses_size, ring_size, order).query_positions(sp_rank)


def ring_positions(seq_len, ulysses_size, ring_size, ring_rank, order) -> torch.Tensor:
    return _layout(seq_len, ulysses_size, ring_size, order).ring_positions(ring_rank)


def scatter_sequence(
    full: torch.Tensor, ulysses_size: int, ring_size: int, order: str, dim: int = 1
) -> list[torch.Tensor]:
    """Split a full ``[..., L, ...]`` tensor (sequence at ``dim``) into the S local tensors, zero tail padding."""
    seq_len = full.shape[dim]
    total = padded_length(seq_len, ulysses_size, ring_size, order)
    pad_shape = list(full.shape)
    pad_shape[dim] = total - seq_len
    padded = torch.cat([full, full.new_zeros(pad_shape)], dim=dim)
    return [
        padded.index_select(dim, query_positions(seq_len, ulysses_size, ring_size, r, order).to(full.device))
        for r in range(ulysses_size * ring_size)
    ]


def gather_sequence(
    shards: list[torch.Tensor], seq_len: int, ulysses_size: int, ring_size: int, order: str, dim: int = 1
) -> torch.Tensor:
    """Inverse of ``scatter_sequence``: rebuild ``[..., L, ...]`` and drop the tail padding."""
    sp_size = ulysses_size * ring_size
    if len(shards) != sp_size:
        raise ValueError(f"need {sp_size} shards for U={ulysses_size}, R={ring_size}, got {len(shards)}")
    positions = torch.cat([query_positions(seq_len, ulysses_size, ring_size, r, order) for r in range(sp_size)]).to(
        shards[0].device
    )
    order = torch.argsort(positions)
    return torch.cat(shards, dim=dim).index_select(dim, order).narrow(dim, 0, seq_len)


def gather_shards(shards, layout: ShardLayout) -> torch.Tensor:
    """Inverse of ``split_tensor`` over all ranks: the query rows reassembled to [L, ...]."""
    if len(shards) != layout.sp_size:
        raise ValueError(f"got {len(shards)} shards; expected S={layout.sp_size}")
    first = shards[0]
    out = first.new_zeros((layout.length, *first.shape[1:]))
    for r, local in enumerate(shards):
        if local.shape[0] != layout.local_length:
            raise ShardMismatchError(f"shard {r} has {local.shape[0]} rows; expected {layout.local_length}")
        for i, seg in enumerate(layout.segments(r)):
            n = min(seg.valid, layout.segment_queries)
            off = i * layout.segment_length
            out[seg.start : seg.start + n] = local[off : off + n]
    return out
