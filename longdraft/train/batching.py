"""Single-device micro-batches: whole sequences, right-padded, as one shard segment each.

On one device the shard contract degenerates to ``S = 1``: one segment of ``C = max length``
queries plus ``K`` look-ahead positions that are all tail padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from longdraft.model.ttt import ShardBatch


def collate_full_sequences(
    input_ids: Sequence[torch.Tensor],
    loss_masks: Sequence[torch.Tensor],
    aux_hidden: Sequence[torch.Tensor],
    last_hidden: Sequence[torch.Tensor],
    ttt_length: int,
) -> ShardBatch:
    """Stack per-sample ``[L_i]`` / ``[L_i, D]`` tensors into a ``ShardBatch`` with ``n_seg = 1``."""
    lengths = [int(x.shape[0]) for x in input_ids]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"every sample needs at least one token, got lengths {lengths}")
    for name, seq in (("loss_mask", loss_masks), ("aux_hidden", aux_hidden), ("last_hidden", last_hidden)):
        bad = [(i, int(t.shape[0]), n) for i, (t, n) in enumerate(zip(seq, lengths)) if t.shape[0] != n]
        if bad:
            i, got, want = bad[0]
            raise ValueError(f"sample {i}: {name} has {got} positions but input_ids has {want}")
    width = max(lengths) + ttt_length

    def pad(tensors, dtype=None):
        first = tensors[0]
        out = first.new_zeros((len(tensors), 1, width, *first.shape[1:]), dtype=dtype or first.dtype)
        for i, t in enumerate(tensors):
            out[i, 0, : t.shape[0]] = t
        return out

    is_real = torch.zeros(len(lengths), 1, width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        is_real[i, 0, :n] = True
    return ShardBatch(
        input_ids=pad(list(input_ids), torch.int64),
        aux_hidden=pad(list(aux_hidden)),
        last_hidden=pad(list(last_hidden)),
        loss_mask=pad([m.bool() for m in loss_masks]),
        is_real=is_real,
        positions=torch.arange(max(lengths)),
    )
