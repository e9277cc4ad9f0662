"""Packing: whole documents laid end to end in one sequence, up to a token budget.

``plan_micro_batches`` decides which documents share a micro-batch (the one-device source and the
controller call it on a step's samples); ``pack_features`` and ``pack_loss_masks`` build the packed
sequence's tensors and loss mask from the documents' own, which the writer then splits with a
``ShardGrid.for_documents`` layout. Packing moves no document across a step and cuts none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from longdraft.data.loss_mask import pack_loss_mask, unpack_loss_mask


def plan_micro_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into micro-batches of at most ``budget`` tokens each, first-fit
    decreasing: longest first, each into the first micro-batch with room, else a new one. A
    document longer than the budget is a micro-batch of its own. Deterministic (ties keep input
    order); within a micro-batch documents keep their order of placement (longest first)."""
    if budget < 1:
        raise ValueError(f"token budget {budget}; expected >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = int(lengths[i])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(budget - n)
    return bins


def pack_features(documents: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One sample dict of the documents' tensors concatenated along the position axis (dim 0).
    Every document must have the same tensor names and, within a document, the same row count."""
    if not documents:
        raise ValueError("a packed sequence needs at least one document")
    names = list(documents[0])
    for i, doc in enumerate(documents):
        if list(doc) != names:
            raise ValueError(f"document {i} has tensors {sorted(doc)}; document 0 has {sorted(names)}")
        rows = {name: int(t.shape[0]) for name, t in doc.items()}
        if len(set(rows.values())) != 1 or min(rows.values()) < 1:
            raise ValueError(f"document {i}: tensors have row counts {rows}; expected one count >= 1")
    return {name: torch.cat([doc[name] for doc in documents]) for name in names}


def pack_loss_masks(packed_masks: Sequence[Sequence[int]], lengths: Sequence[int]) -> list[int]:
    """The packed sequence's run-length loss mask: each document's mask truncated or zero-padded to
    its own length (as unpacked), then concatenated."""
    if len(packed_masks) != len(lengths):
        raise ValueError(f"{len(packed_masks)} loss masks for {len(lengths)} documents")
    if not lengths:
        return []
    return pack_loss_mask(torch.cat([unpack_loss_mask(m, int(n)) for m, n in zip(packed_masks, lengths)]))


def ring_work(layout) -> list[int]:
    """Step-0 attention pairs each ring rank computes for a ``ShardLayout`` (after the Ulysses
    all-to-all a ring rank attends all its positions' queries): per real position, its position
    inside its document + 1."""
    pairs = torch.cat([torch.arange(1, n + 1, dtype=torch.int64) for n in layout.doc_lengths])
    work = []
    for q in range(layout.ring):
        held = layout.ring_positions(q)
        work.append(int(pairs[held[held < layout.length]].sum()))
    return work


def balanced_order(lengths: Sequence[int], grid, candidates: int = 24, seed: int = 0) -> list[int]:
    """An order of one micro-batch's documents whose ring ranks share the attention work most
    evenly under ``grid`` (a ``ShardGrid``): zigzag balances one sequence's causal work, not a row
    of documents of mixed lengths. Tries longest first, the longest in the middle with the others
    alternating around it, and seeded shuffles; keeps the first with the smallest maximum. Any order
    trains the same (the loss sums over documents), so this only moves work between ranks."""
    n = len(lengths)
    by_length = sorted(range(n), key=lambda i: (-int(lengths[i]), i))
    if grid.ring == 1 or n == 1:
        return by_length
    middle = by_length[1::2][::-1] + by_length[:1] + by_length[2::2]
    gen = torch.Generator().manual_seed(seed)
    orders = [by_length, middle] + [torch.randperm(n, generator=gen).tolist() for _ in range(candidates)]
    best, best_max = by_length, None
    for order in orders:
        peak = max(ring_work(grid.for_documents([lengths[i] for i in order])))
        if best_max is None or peak < best_max:
            best, best_max = order, peak
    return best
