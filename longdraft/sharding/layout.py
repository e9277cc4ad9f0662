"""The shard contract: which global positions each sequence-parallel rank stores.

Writer (producer) and reader (trainer) both call these functions on the same inputs, so they
can never disagree about lengths, offsets or padding. Pure tensor code, no communication.

Inputs: global length ``L`` (after truncation), Ulysses size ``U``, ring size ``R``
(``S = U * R``), ``K = ttt_length``. SP rank ``r = q * U + u`` (ring rank ``q``, Ulysses rank
``u``). Every segment holds ``n`` query positions plus ``K`` lookahead positions (the next
global tokens, which feed the per-step left shifts of ids, targets and masks without any
communication); positions ``>= L`` are zero rows. Padding exists only at the global tail.

The *order* (``contiguous`` or ``zigzag``) says which positions go to which rank:

- ``contiguous``: ``C = ceil(L / S)``; one segment ``[r*C, r*C + C + K)``; local length
  ``C + K``. After the Ulysses all-to-all ring rank ``q`` holds ``[q*U*C, (q+1)*U*C)``.
- ``zigzag``: ``c = ceil(L / (2S))``; the sequence is cut into ``2R`` chunks of ``U*c``;
  ring rank ``q`` owns chunks ``q`` and ``2R-1-q``, Ulysses rank ``u`` sub-block ``u`` of each.
  Two segments ``[q*U*c + u*c, +c+K)`` and ``[(2R-1-q)*U*c + u*c, +c+K)`` stored one after
  the other; local length ``2 * (c + K)``.

A *packed* layout (``documents``: the lengths of the whole documents laid end to end, summing to
``L``) is sharded exactly like one sequence of length ``L``; what changes is per row: its document
(``local_doc_ids``) and its RoPE position, which restarts at 0 in every document (``query_positions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longdraft.choices import SHARD_ORDERS, ShardOrder


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
    order: ShardOrder = "contiguous"
    # Lengths of the whole documents packed into this sequence, in order; () is one document of
    # length L (and so is (L,): normalised to (), so both layouts compare and serialise alike).
    documents: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "documents", tuple(int(n) for n in self.documents))
        if len(self.documents) == 1 and self.documents[0] == self.length:
            object.__setattr__(self, "documents", ())
        if self.documents and (min(self.documents) < 1 or sum(self.documents) != self.length):
            raise ValueError(
                f"document lengths {self.documents} must each be >= 1 and sum to L={self.length} "
                f"(they sum to {sum(self.documents)})"
            )
        if self.order not in SHARD_ORDERS:
            raise ValueError(f"shard order {self.order!r} is not one of {SHARD_ORDERS}")
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
        return 1 if self.order == "contiguous" else 2

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
        if self.order == "contiguous":
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

    @property
    def doc_lengths(self) -> tuple[int, ...]:
        """The document lengths, ``(L,)`` when the sequence is one document."""
        return self.documents or (self.length,)

    def doc_starts(self) -> torch.Tensor:
        """Global position of every document's first token, int64 [n_docs]."""
        lengths = torch.tensor(self.doc_lengths, dtype=torch.int64)
        return torch.cumsum(lengths, 0) - lengths

    def local_doc_ids(self, r: int) -> torch.Tensor:
        """Document index of every local row, int64 [local_length]; -1 on tail padding (>= L)."""
        pos = self.local_positions(r)
        ends = torch.cumsum(torch.tensor(self.doc_lengths, dtype=torch.int64), 0)
        ids = torch.searchsorted(ends, pos, right=True)
        return torch.where(pos < self.length, ids, torch.full_like(ids, -1))

    def local_doc_positions(self, r: int) -> torch.Tensor:
        """Position of every local row inside its document, int64 [local_length]; tail padding
        continues the last document's positions (as one unpacked sample's padding does)."""
        pos = self.local_positions(r)
        ids = self.local_doc_ids(r)
        starts = self.doc_starts()
        return pos - starts[torch.where(ids >= 0, ids, torch.full_like(ids, len(starts) - 1))]

    def query_positions(self, r: int) -> torch.Tensor:
        """RoPE positions of the local queries, int64 [local_queries]: the position inside the query's
        document (the global position when unpacked); tail padding continues the last document."""
        return self.local_doc_positions(r)[self.query_mask(r)]

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
        if self.order == "contiguous":
            return q * chunk + steps
        return torch.cat([q * chunk + steps, (2 * self.ring - 1 - q) * chunk + steps])

    def _check_rank(self, r: int) -> None:
        if not 0 <= r < self.sp_size:
            raise ValueError(f"SP rank {r} is outside [0, {self.sp_size}) for U={self.ulysses}, R={self.ring}")


@dataclass(frozen=True)
class ShardGrid:
    """How every sample of a run is sharded; ``for_length(L)`` is one sample's ``ShardLayout``.

    Built once from ``training`` (``sp_ulysses_size``, ``sp_ring_size``, ``ttt_length``,
    ``shard_order``), so producers and trainer ranks carry K and the order in one object.
    """

    ulysses: int
    ring: int
    ttt_length: int
    order: ShardOrder = "contiguous"

    @classmethod
    def from_training(cls, training) -> ShardGrid:
        t = training
        return cls(t.sp_ulysses_size, t.sp_ring_size, t.ttt_length, t.shard_order)

    def for_length(self, length: int) -> ShardLayout:
        return ShardLayout(length, self.ulysses, self.ring, self.ttt_length, self.order)

    def for_documents(self, doc_lengths) -> ShardLayout:
        """One packed micro-batch: whole documents of ``doc_lengths`` tokens laid end to end."""
        docs = tuple(int(n) for n in doc_lengths)
        if not docs:
            raise ValueError("a packed sequence needs at least one document")
        return ShardLayout(sum(docs), self.ulysses, self.ring, self.ttt_length, self.order, docs)
