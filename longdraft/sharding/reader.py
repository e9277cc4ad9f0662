"""The reader's side of the shard contract: a rank's batch rebuilt from its own shard and the
sample's metadata (global length, packed loss mask, layout). Local masks and positions come from
the contract, never from the shard's padded length.

The single-device path is ``S = 1`` of the same contract: each sample is split into one shard and
read back as rank 0 would (``full_sequence_batch``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from longdraft.data.loss_mask import unpack_loss_mask
from longdraft.sharding.batch import ShardBatch, stack_batches
from longdraft.sharding.header import check_shard
from longdraft.sharding.layout import ShardLayout
from longdraft.sharding.packing import pack_features, pack_loss_masks
from longdraft.sharding.split import split_sample, split_tensor


def local_loss_mask(
    packed: Sequence[int], layout: ShardLayout, r: int, dtype: torch.dtype = torch.long
) -> torch.Tensor:
    """Rank ``r``'s slice of the global run-length packed loss mask, [local_length]; the global
    mask is first truncated or zero-padded to L, exactly as the writer sliced the tokens."""
    return split_tensor(unpack_loss_mask(packed, layout.length, dtype=dtype), layout, r)


def should_skip(packed: Sequence[int], min_loss_tokens: int, length: int) -> bool:
    """Skip a sample with fewer than ``max(1, min_loss_tokens)`` loss tokens in the GLOBAL mask
    truncated to ``length`` = L, so every rank of an SP group decides alike."""
    return int(unpack_loss_mask(packed, length).sum()) < max(1, min_loss_tokens)


def read_shard(
    shard: Mapping[str, torch.Tensor], layout: ShardLayout, r: int, packed_loss_mask: Sequence[int], key: str = "?"
) -> ShardBatch:
    """Rank ``r``'s ``ShardBatch`` (batch of one) from its shard; the header must match ``layout``."""
    check_shard(shard, layout, r, key=key)
    n_seg, seg = layout.num_segments, layout.segment_length
    device = shard["aux_hidden"].device  # the features' (an engine's output); masks and ids follow them

    def segments(x: torch.Tensor) -> torch.Tensor:
        return x.to(device).reshape(1, n_seg, seg, *x.shape[1:])

    return ShardBatch(
        input_ids=segments(shard["input_ids"].long()),
        aux_hidden=segments(shard["aux_hidden"]),  # kept in the storage dtype: cast where used
        last_hidden=segments(shard["last_hidden"]),
        loss_mask=segments(local_loss_mask(packed_loss_mask, layout, r, dtype=torch.bool)),
        is_real=segments(layout.valid_mask(r)),
        positions=layout.query_positions(r).to(device),
        lengths=(layout.length,),
        doc_ids=segments(layout.local_doc_ids(r)) if layout.documents else None,
        documents=(layout.documents,) if layout.documents else None,
    )


def full_sequence_batch(
    samples: Sequence[Mapping[str, torch.Tensor]], packed_loss_masks: Sequence[Sequence[int]], ttt_length: int
) -> ShardBatch:
    """Whole sequences on one device: each sample (``input_ids`` [L], ``aux_hidden`` [L, 3H],
    ``last_hidden`` [L, H]) goes through the contract with ``S = 1``, then the batch is stacked."""
    if not samples:
        raise ValueError("a micro-batch needs at least one sample")
    batches = []
    for i, (tensors, packed) in enumerate(zip(samples, packed_loss_masks, strict=True)):
        length = int(tensors["input_ids"].shape[0])
        for name, t in tensors.items():
            if t.shape[0] != length:
                raise ValueError(f"sample {i}: {name} has {t.shape[0]} positions but input_ids has {length}")
        layout = ShardLayout(length, 1, 1, ttt_length)
        (shard,) = split_sample(tensors, layout)
        batches.append(read_shard(shard, layout, 0, packed, key=f"sample {i}"))
    return stack_batches(batches)


def packed_sequence_batch(
    documents: Sequence[Mapping[str, torch.Tensor]], packed_loss_masks: Sequence[Sequence[int]], ttt_length: int
) -> ShardBatch:
    """Whole documents packed into one sequence on one device (batch of one): the ``S = 1`` case of a
    packed layout. Each document's loss mask is truncated or zero-padded to its own length first."""
    sample = pack_features(documents)
    lengths = [int(d["input_ids"].shape[0]) for d in documents]
    layout = ShardLayout(sum(lengths), 1, 1, ttt_length, documents=tuple(lengths))
    (shard,) = split_sample(sample, layout)
    return read_shard(shard, layout, 0, pack_loss_masks(packed_loss_masks, lengths), key="packed sequence")
