"""The shard contract: which global positions each sequence-parallel rank stores.

Writer (producer) and reader (trainer) both call these functions on the same inputs, so they
can never disagree about lengths, offsets or padding. Pure tensor code, no communication.

Inputs: global length ``L`` (after truncation), Ulysses size ``U``, ring size ``R``
(``S = U * R``), ``K = ttt_length``. SP rank ``r = q * U + u`` (ring rank ``q``, Ulysses rank
``u``). Every segment holds ``n`` query positions plus ``K`` lookahead positions (the next
global tokens, which feed the per-step left shifts of ids, targets and masks without any
communication); positions ``>= L`` are zero rows. Padding exists only at the global tail.

- ``contiguous``: ``C = ceil(L / S)``; one segment ``[r*C, r*C + C + K)``; local length
  ``C + K``. After the Ulysses all-to-all ring rank ``q`` holds ``[q*U*C, (q+1)*U*C)``.
- ``zigzag``: ``c = ceil(L / (2S))``; the sequence is cut into ``2R`` chunks of ``U*c``;
  ring rank ``q`` owns chunks ``q`` and ``2R-1-q``, Ulysses rank ``u`` sub-block ``u`` of each.
  Two segments ``[q*U*c + u*c, +c+K)`` and ``[(2R-1-q)*U*c + u*c, +c+K)`` stored one after
  the other; local length ``2 * (c + K)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch

from longdraft.data.loss_mask import count_loss_tokens, parse_loss_mask, unpack_loss_mask

LAYOUTS: tuple[str, ...] = ("contiguous", "zigzag")
HEADER_KEY = "shard_header"
"""Name of the int64 tensor that carries a shard's `ShardHeader` next to its data tensors."""


class ShardMismatchError(ValueError):
    """A shard's header or shape disagrees with what the reader computed from metadata."""


def global_length(total_tokens: int, max_seq_length: int | None) -> int:
    """``L``: the sample length after truncation to ``max_seq_length`` (None: no truncation)."""
    if total_tokens < 1:
        raise ValueError(f"sample has {total_tokens} tokens; expected >= 1")
    return total_tokens if max_seq_length is None else min(total_tokens, max_seq_length)


@dataclass(frozen=True)
class Segment:
    start: int  # global position of the segment's first row
    valid: int  # rows that are real tokens (the rest, up to the segment length, are tail padding)


@dataclass(frozen=True)
class ShardLayout:
    length: int  # L
    ulysses: int  # U
    ring: int  # R
    ttt_length: int  # K
    layout: str = "contiguous"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"shard layout {self.layout!r} is not one of {LAYOUTS}")
        if self.length < 1:
            raise ValueError(f"global length L={self.length}; expected >= 1")
        if self.ulysses < 1 or self.ring < 1:
            raise ValueError(f"ulysses={self.ulysses}, ring={self.ring}; both must be >= 1")
        if self.ttt_length < 0:
            raise ValueError(f"ttt_length K={self.ttt_length}; expected >= 0")

    @property
    def sp_size(self) -> int:
        return self.ulysses * self.ring

    @property
    def num_segments(self) -> int:
        return 1 if self.layout == "contiguous" else 2

    @property
    def segment_queries(self) -> int:
        """Queries per segment: ``C`` (contiguous) or ``c`` (zigzag)."""
        parts = self.sp_size * self.num_segments
        return -(-self.length // parts)

    @property
    def segment_length(self) -> int:
        return self.segment_queries + self.ttt_length

    @property
    def local_length(self) -> int:
        return self.num_segments * self.segment_length

    @property
    def local_queries(self) -> int:
        return self.num_segments * self.segment_queries

    @property
    def padded_length(self) -> int:
        """Query slots over all ranks (``>= L``; the excess is tail padding)."""
        return self.sp_size * self.local_queries

    def coords(self, r: int) -> tuple[int, int]:
        """(ring rank q, Ulysses rank u) of SP rank ``r``."""
        self._check_rank(r)
        return divmod(r, self.ulysses)

    def segments(self, r: int) -> list[Segment]:
        q, u = self.coords(r)
        n = self.segment_queries
        if self.layout == "contiguous":
            starts = [r * n]
        else:
            chunk = self.ulysses * n
            starts = [q * chunk + u * n, (2 * self.ring - 1 - q) * chunk + u * n]
        return [Segment(s, max(0, min(s + self.segment_length, self.length) - s)) for s in starts]

    def local_positions(self, r: int) -> torch.Tensor:
        """Global position of every local row (queries and lookahead), int64 [local_length]."""
        steps = torch.arange(self.segment_length, dtype=torch.int64)
        return torch.cat([seg.start + steps for seg in self.segments(r)])

    def query_mask(self, r: int) -> torch.Tensor:
        """Bool [local_length]: True on query rows, False on lookahead rows."""
        one = torch.zeros(self.segment_length, dtype=torch.bool)
        one[: self.segment_queries] = True
        return one.repeat(self.num_segments)

    def query_positions(self, r: int) -> torch.Tensor:
        """Global positions of the local queries, int64 [local_queries]; values >= L are padding."""
        return self.local_positions(r)[self.query_mask(r)]

    def valid_mask(self, r: int) -> torch.Tensor:
        """Bool [local_length]: True where the row is a real token (global position < L)."""
        return self.local_positions(r) < self.length

    def ring_positions(self, q: int) -> torch.Tensor:
        """Positions held by ring rank ``q`` after the Ulysses all-to-all, chunk-major order:
        contiguous ``[q*U*C, (q+1)*U*C)``; zigzag ``[chunk q | chunk 2R-1-q]``. (For zigzag, a
        plain all-to-all concatenation yields Ulysses-major order; the USP backend reorders.)"""
        if not 0 <= q < self.ring:
            raise ValueError(f"ring rank {q} is outside [0, {self.ring})")
        chunk = self.ulysses * self.segment_queries
        steps = torch.arange(chunk, dtype=torch.int64)
        if self.layout == "contiguous":
            return q * chunk + steps
        return torch.cat([q * chunk + steps, (2 * self.ring - 1 - q) * chunk + steps])

    def _check_rank(self, r: int) -> None:
        if not 0 <= r < self.sp_size:
            raise ValueError(f"SP rank {r} is outside [0, {self.sp_size}) for U={self.ulysses}, R={self.ring}")


# --- headers -------------------------------------------------------------------------------

_LAYOUT_CODE = {name: i for i, name in enumerate(LAYOUTS)}


@dataclass(frozen=True)
class ShardHeader:
    length: int  # L
    sp_size: int  # S
    ulysses: int  # U
    ring: int  # R
    ttt_length: int  # K
    rank: int  # r
    starts: tuple[int, ...]
    valids: tuple[int, ...]
    layout: str

    def to_tensor(self) -> torch.Tensor:
        """int64 [8 + 2*n_seg]: travels with the shard's tensors through any store."""
        head = [self.length, self.sp_size, self.ulysses, self.ring, self.ttt_length, self.rank,
                _LAYOUT_CODE[self.layout], len(self.starts)]
        return torch.tensor(head + list(self.starts) + list(self.valids), dtype=torch.int64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor, key: str = "?") -> "ShardHeader":
        v = [int(x) for x in t.flatten().tolist()]
        if len(v) < 8 or len(v) != 8 + 2 * v[7] or not 0 <= v[6] < len(LAYOUTS):
            raise ShardMismatchError(f"shard {key}: '{HEADER_KEY}' tensor {v} is not a valid shard header")
        n = v[7]
        return cls(v[0], v[1], v[2], v[3], v[4], v[5], tuple(v[8:8 + n]), tuple(v[8 + n:8 + 2 * n]),
                   LAYOUTS[v[6]])


def expected_header(layout: ShardLayout, r: int) -> ShardHeader:
    segs = layout.segments(r)
    return ShardHeader(layout.length, layout.sp_size, layout.ulysses, layout.ring, layout.ttt_length, r,
                       tuple(s.start for s in segs), tuple(s.valid for s in segs), layout.layout)


def check_header(actual: ShardHeader, expected: ShardHeader, key: str = "?") -> None:
    """Refuse a shard written under a different contract; the error names both headers."""
    if actual == expected:
        return
    diff = [f"{f.name}={getattr(actual, f.name)} (expected {getattr(expected, f.name)})"
            for f in fields(ShardHeader) if getattr(actual, f.name) != getattr(expected, f.name)]
    raise ShardMismatchError(f"shard {key}: header {actual} does not match the reader's expected header "
                             f"{expected}; differing: {', '.join(diff)}")


def check_shard(shard: Mapping[str, torch.Tensor], layout: ShardLayout, r: int, key: str = "?") -> None:
    """Header equals the expected one and every data tensor has ``local_length`` rows."""
    if HEADER_KEY not in shard:
        raise ShardMismatchError(f"shard {key}: no '{HEADER_KEY}' tensor; got {sorted(shard)}")
    check_header(ShardHeader.from_tensor(shard[HEADER_KEY], key), expected_header(layout, r), key)
    for name, t in shard.items():
        if name != HEADER_KEY and (t.dim() == 0 or t.shape[0] != layout.local_length):
            raise ShardMismatchError(f"shard {key}: tensor '{name}' has shape {tuple(t.shape)}; expected "
                                     f"{layout.local_length} rows (local length for {layout})")


# --- writer and reader -----------------------------------------------------------------------

def split_tensor(x: torch.Tensor, layout: ShardLayout, r: int) -> torch.Tensor:
    """Rank ``r``'s rows of ``x`` [>= L, ...] (rows past L are dropped: truncation),
    zero-padded at the tail to [local_length, ...]."""
    if x.dim() == 0 or x.shape[0] < layout.length:
        raise ValueError(f"tensor of shape {tuple(x.shape)} has fewer than L={layout.length} rows")
    out = x.new_zeros((layout.local_length, *x.shape[1:]))
    for i, seg in enumerate(layout.segments(r)):
        off = i * layout.segment_length
        out[off:off + seg.valid] = x[seg.start:seg.start + seg.valid]
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


def gather_shards(shards: Sequence[torch.Tensor], layout: ShardLayout) -> torch.Tensor:
    """Inverse of `split_tensor` over all ranks: the query rows reassembled to [L, ...]."""
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
            out[seg.start:seg.start + n] = local[off:off + n]
    return out


def local_loss_mask(packed: Sequence[int] | str, layout: ShardLayout, r: int,
                    dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Rank ``r``'s slice of the global run-length packed loss mask, [local_length]; the global
    mask is first truncated or zero-padded to L, exactly as the writer sliced the tokens."""
    return split_tensor(unpack_loss_mask(packed, layout.length, dtype=dtype), layout, r)


def should_skip(packed: Sequence[int] | str, min_loss_tokens: int, length: int | None = None) -> bool:
    """Skip a sample with fewer than ``max(1, min_loss_tokens)`` loss tokens in the GLOBAL mask
    (truncated to ``length`` = L when given), so every rank of an SP group decides alike."""
    runs = parse_loss_mask(packed) if isinstance(packed, str) else [int(n) for n in packed]
    if length is None:
        count = count_loss_tokens(runs)
    else:
        count = int(unpack_loss_mask(runs, length).sum())
    return count < max(1, min_loss_tokens)
