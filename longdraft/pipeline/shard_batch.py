"""A trainer rank's micro-batch, rebuilt from its own shard and the sample's metadata."""

from __future__ import annotations

import torch

from longdraft.model.ttt import ShardBatch
from longdraft.pipeline.records import SampleMeta
from longdraft.shard import ShardLayout, check_shard, local_loss_mask


def layout_of(meta: SampleMeta) -> ShardLayout:
    return ShardLayout(**meta.layout)


def shard_batch(meta: SampleMeta, shard: dict[str, torch.Tensor], sp_rank: int) -> ShardBatch:
    """Local masks and positions come from the contract, never from the shard's padded length."""
    layout = layout_of(meta)
    check_shard(shard, layout, sp_rank, key=f"{meta.key}_usp{sp_rank}")
    n_seg, seg = layout.num_segments, layout.segment_length

    def segments(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, n_seg, seg, *x.shape[1:])

    return ShardBatch(
        input_ids=segments(shard["input_ids"].long()),
        aux_hidden=segments(shard["aux_hidden"].float()),
        last_hidden=segments(shard["last_hidden"].float()),
        loss_mask=segments(local_loss_mask(meta.packed_loss_mask, layout, sp_rank, dtype=torch.bool)),
        is_real=segments(layout.valid_mask(sp_rank)),
        positions=layout.query_positions(sp_rank),
    )
