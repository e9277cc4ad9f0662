"""Which global query positions each sequence-parallel rank holds: pure functions, no communication.

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

from typing import Literal

import torch

Layout = Literal["contiguous", "zigzag"]
LAYOUTS: tuple[str, ...] = ("contiguous", "zigzag")


def _check(seq_len: int, ulysses_size: int, ring_size: int, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"sequence layout {layout!r} is not one of {LAYOUTS}")
    if seq_len < 1:
        raise ValueError(f"global sequence length must be >= 1, got {seq_len}")
    if ulysses_size < 1 or ring_size < 1:
        raise ValueError(f"ulysses_size={ulysses_size} and ring_size={ring_size} must be >= 1")


def segment_length(seq_len: int, ulysses_size: int, ring_size: int, layout: str) -> int:
    """Tokens per contiguous segment of one SP rank: ``C`` (contiguous) or ``c`` (zigzag, 2 segments)."""
    _check(seq_len, ulysses_size, ring_size, layout)
    sp_size = ulysses_size * ring_size
    parts = sp_size if layout == "contiguous" else 2 * sp_size
    return -(-seq_len // parts)


def local_length(seq_len: int, ulysses_size: int, ring_size: int, layout: str) -> int:
    """Number of query positions each SP rank holds (the same on every rank)."""
    seg = segment_length(seq_len, ulysses_size, ring_size, layout)
    return seg if layout == "contiguous" else 2 * seg


def padded_length(seq_len: int, ulysses_size: int, ring_size: int, layout: str) -> int:
    return ulysses_size * ring_size * local_length(seq_len, ulysses_size, ring_size, layout)


def query_positions(seq_len: int, ulysses_size: int, ring_size: int, sp_rank: int, layout: str) -> torch.Tensor:
    """Global positions (int64, local order) of SP rank ``sp_rank``'s queries; values ``>= L`` are padding."""
    seg = segment_length(seq_len, ulysses_size, ring_size, layout)
    sp_size = ulysses_size * ring_size
    if not 0 <= sp_rank < sp_size:
        raise ValueError(f"sp_rank {sp_rank} is outside [0, {sp_size}) for U={ulysses_size}, R={ring_size}")
    steps = torch.arange(seg, dtype=torch.int64)
    if layout == "contiguous":
        return sp_rank * seg + steps
    ring, uly = divmod(sp_rank, ulysses_size)
    chunk = ulysses_size * seg
    first = ring * chunk + uly * seg
    second = (2 * ring_size - 1 - ring) * chunk + uly * seg
    return torch.cat([first + steps, second + steps])


def ring_positions(seq_len: int, ulysses_size: int, ring_size: int, ring_rank: int, layout: str) -> torch.Tensor:
    """Global positions held by ring rank ``ring_rank`` after the all-to-all, in the order the USP
    backend computes in: contiguous ``[q*U*C, (q+1)*U*C)``; zigzag ``[chunk q | chunk 2R-1-q]``."""
    seg = segment_length(seq_len, ulysses_size, ring_size, layout)
    if not 0 <= ring_rank < ring_size:
        raise ValueError(f"ring_rank {ring_rank} is outside [0, {ring_size})")
    chunk = ulysses_size * seg
    steps = torch.arange(chunk, dtype=torch.int64)
    if layout == "contiguous":
        return ring_rank * chunk + steps
    return torch.cat([ring_rank * chunk + steps, (2 * ring_size - 1 - ring_rank) * chunk + steps])


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
