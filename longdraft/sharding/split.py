"""The writer's side of the shard contract: one sample's tensors split into one shard per SP rank."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from longdraft.sharding.header import HEADER_KEY, expected_header
from longdraft.sharding.layout import ShardLayout


def split_tensor(x: torch.Tensor, layout: ShardLayout, r: int) -> torch.Tensor:
    """Rank ``r``'s rows of ``x`` [>= L, ...] (rows past L are dropped: truncation),
    zero-padded at the tail to [local_length, ...]."""
    if x.dim() == 0 or x.shape[0] < layout.length:
        raise ValueError(f"tensor of shape {tuple(x.shape)} has fewer than L={layout.length} rows")
    out = x.new_zeros((layout.local_length, *x.shape[1:]))
    for i, seg in enumerate(layout.segments(r)):
        off = i * layout.segment_length
        out[off : off + seg.valid] = x[seg.start : seg.start + seg.valid]
    return out


def split_sample(sample: Mapping[str, torch.Tensor], layout: ShardLayout) -> list[dict[str, torch.Tensor]]:
    """One dict per SP rank: every tensor split along dim 0, plus the ``shard_header`` tensor."""
    if HEADER_KEY in sample:
        raise ValueError(f"sample already has a '{HEADER_KEY}' entry; that name is reserved")
    shards = []
    for r in range(layout.sp_size):
        shard = {name: split_tensor(t, layout, r) for name, t in sample.items()}
        shard[HEADER_KEY] = expected_header(layout, r).to_tensor()
        shards.append(shard)
    return shards
