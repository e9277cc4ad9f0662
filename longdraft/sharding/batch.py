"""``ShardBatch``: the local tensors of one micro-batch on one rank, as the TTT unroll reads them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch


@dataclass
class ShardBatch:
    """Local tensors of one micro-batch on one rank. Segment axis 1, position axis 2.

    input_ids ``[B, n_seg, c+K]``; aux_hidden ``[B, n_seg, c+K, 3H]``; last_hidden ``[B, n_seg, c+K, H]``
    (target hidden after its final norm); loss_mask ``[B, n_seg, c+K]``; is_real ``[B, n_seg, c+K]``
    (the position is a token of the sequence, not tail padding); positions ``[n_seg*c]`` global
    position of every query; lengths: the global length ``L`` of each row's sample (RoPE variants
    such as ``dynamic`` pick their frequencies from it, so every shard of a sample rotates alike).

    Packed rows (several whole documents in one sequence): ``doc_ids`` ``[B, n_seg, c+K]`` is the
    document index of every row (-1 on tail padding) and ``documents`` each row's document lengths;
    ``positions`` then restart at 0 in every document. ``doc_ids = None``: one document per row.
    """

    input_ids: torch.Tensor
    aux_hidden: torch.Tensor
    last_hidden: torch.Tensor
    loss_mask: torch.Tensor
    is_real: torch.Tensor
    positions: torch.Tensor
    lengths: tuple[int, ...]
    doc_ids: torch.Tensor | None = None
    documents: tuple[tuple[int, ...], ...] | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ShardBatch:
        """The same batch with ``fn`` applied to every tensor (moves, pinning); the rest is kept."""
        return replace(self, **{name: fn(t) for name, t in self.tensors().items()})

    def to(self, device) -> ShardBatch:
        return self.map_tensors(lambda t: t.to(device))

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    def query_tokens(self) -> int:
        """Real tokens among the query rows (look-ahead rows belong to the next shard)."""
        c = self.positions.numel() // self.input_ids.shape[1]
        return int(self.is_real[:, :, :c].sum())


def attention_pairs(batch: ShardBatch, window: int | None = None) -> int:
    """Query-key pairs the step-0 causal block allows for this shard's real queries: each query sees
    the keys of its own document up to itself, ``position + 1`` of them (positions restart at 0 in
    every document), at most ``window``. The attention work a rank does for its queries, whichever
    rank holds the keys."""
    c = batch.positions.numel() // batch.input_ids.shape[1]
    real = batch.is_real[:, :, :c].reshape(batch.batch_size, -1).bool()
    seen = (batch.positions + 1).clamp(max=window) if window is not None else batch.positions + 1
    return int((seen.unsqueeze(0) * real).sum())


def stack_batches(batches: list[ShardBatch]) -> ShardBatch:
    """Stack single-sample, single-segment batches along the batch axis, right-padding each to the
    longest (the padding is tail padding: not real, no loss). Positions are the longest's."""
    if not batches:
        raise ValueError("cannot stack an empty list of batches")
    width = max(b.input_ids.shape[2] for b in batches)

    def pad(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((x.shape[0], x.shape[1], width, *x.shape[3:]))
        out[:, :, : x.shape[2]] = x
        return out

    stacked = {
        f.name: torch.cat([pad(getattr(b, f.name)) for b in batches])
        for f in fields(ShardBatch)
        if f.name not in ("positions", "lengths", "doc_ids", "documents")
    }
    positions = max((b.positions for b in batches), key=lambda p: p.numel())
    lengths = tuple(n for b in batches for n in b.lengths)
    if all(b.doc_ids is None for b in batches):
        return ShardBatch(positions=positions, lengths=lengths, **stacked)
    if len(batches) > 1:
        # one positions vector serves every row: rows of packed documents cannot share it
        raise ValueError("a packed micro-batch is one sequence (batch size 1); it cannot be stacked with others")
    (b,) = batches
    return ShardBatch(positions=positions, lengths=lengths, doc_ids=b.doc_ids, documents=b.documents, **stacked)
