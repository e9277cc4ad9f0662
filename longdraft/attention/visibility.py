"""Which step-0 keys a query sees: causal, within its own document, and within a sliding window.

A query at global index ``t`` sees the step-0 key ``s`` when ``s <= t``, both lie in the same
document of the packed row, and ``t - window < s`` (``window`` None: no limit). The documents are
the row's lengths in order; positions past their sum (tail padding) form one more document, so
every query sees at least its own key. ``KeyVisibility()`` (no documents, no window) is plain
causal attention, and the backends keep their unchanged code path for it.

``plans(q_runs, k_runs)`` cuts a (query block, key block) pair into kernel calls (``BlockPlan``):
one per document that both sides touch, trimmed to the rows and columns that have an allowed pair,
each run in full, causal or with a band mask. Pairs with no allowed (q, k) pair yield no plan:
they are skipped, not computed and masked. Only a window makes band masks (document pieces of the
shard layouts are identical or disjoint ranges); a band piece larger than a tile (``band_tile``, or
``window / 8`` for long windows, which bounds the number of kernel calls by about ``16 T / window``)
is halved, queries and keys, and each part planned again, so its inside becomes full and causal
blocks and only pieces of at most a tile on a side, along the window's edge, run masked. A run is ``(local offset, global start, length)``:
``length`` local rows that hold consecutive global positions.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

from longdraft.attention.blocks import BlockPlan
from longdraft.choices import ShardOrder

Run = tuple[int, int, int]


@dataclass(frozen=True)
class KeyVisibility:
    doc_lengths: tuple[int, ...] | None = None
    window: int | None = None
    band_tile: int = 256  # largest side of a masked kernel call (at least window / 8)

    def __post_init__(self) -> None:
        if self.doc_lengths is not None:
            if not self.doc_lengths or any(int(n) < 1 for n in self.doc_lengths):
                raise ValueError(f"document lengths {self.doc_lengths}: expected one or more lengths >= 1")
            object.__setattr__(self, "doc_lengths", tuple(int(n) for n in self.doc_lengths))
        if self.window is not None and self.window < 1:
            raise ValueError(f"attention window {self.window}: expected >= 1 or None")

    @property
    def plain(self) -> bool:
        """Plain causal attention: the backends' original path."""
        return self.doc_lengths is None and self.window is None

    def with_documents(self, doc_lengths: tuple[int, ...] | None) -> KeyVisibility:
        return KeyVisibility(doc_lengths, self.window, self.band_tile)

    def check_length(self, total: int) -> None:
        """Refuse documents longer, together, than the padded row of ``total`` positions."""
        if self.doc_lengths is not None and sum(self.doc_lengths) > total:
            raise ValueError(
                f"documents {self.doc_lengths} hold {sum(self.doc_lengths)} tokens, more than the row's {total} positions"
            )

    def _starts(self) -> list[int]:
        """Start of every document, the tail padding's included."""
        return [0, *itertools.accumulate(self.doc_lengths or ())]

    def plans(self, q_runs: list[Run], k_runs: list[Run]) -> list[BlockPlan]:
        plans = []
        for q_run, k_run in itertools.product(q_runs, k_runs):
            plans.extend(self._run_plans(q_run, k_run))
        return plans

    def _run_plans(self, q_run: Run, k_run: Run) -> list[BlockPlan]:
        (q_off, q_start, q_len), (k_off, k_start, k_len) = q_run, k_run
        q_end, k_end = q_start + q_len, k_start + k_len
        starts = self._starts()
        ends = [*starts[1:], max(q_end, k_end)]  # the tail padding runs to the end
        plans = []
        # The documents that hold both some of the queries and some of the keys.
        for d in range(bisect.bisect_right(starts, max(q_start, k_start)) - 1, len(starts)):
            d0, d1 = starts[d], ends[d]
            if d0 >= q_end or d0 >= k_end:
                break
            for (r0, r1), (c0, c1), causal, band in self._pieces(
                (max(q_start, d0), min(q_end, d1)), (max(k_start, d0), min(k_end, d1))
            ):
                rows = slice(q_off + r0 - q_start, q_off + r1 - q_start)
                cols = slice(k_off + c0 - k_start, k_off + c1 - k_start)
                plans.append(BlockPlan(rows, cols, causal, band))
        return plans

    def _pieces(self, queries: tuple[int, int], keys: tuple[int, int]) -> list:
        """``_piece``; a band piece longer than ``band_tile`` on a side is halved on every side
        longer than half of it, and the parts are planned again."""
        piece = self._piece(queries, keys)
        if piece is None:
            return []
        (q0, q1), (k0, k1), _, band = piece
        tile = max(self.band_tile, (self.window or 0) // 8)
        if band is None or max(q1 - q0, k1 - k0) <= tile:
            return [piece]
        halves = [self._halves(q0, q1, tile), self._halves(k0, k1, tile)]
        return [p for qs, ks in itertools.product(*halves) for p in self._pieces(qs, ks)]

    @staticmethod
    def _halves(lo: int, hi: int, tile: int) -> list[tuple[int, int]]:
        if hi - lo <= max(tile // 2, 1):
            return [(lo, hi)]
        mid = (lo + hi) // 2
        return [(lo, mid), (mid, hi)]

    def _piece(self, queries: tuple[int, int], keys: tuple[int, int]):
        """Global query and key ranges of one document -> (rows, cols, causal, band) trimmed to the
        rows and columns with an allowed pair, or None when there is none."""
        window = self.window
        span = window if window is not None else float("inf")
        (q0, q1), (k0, k1) = queries, keys
        q0, q1 = max(q0, k0), min(q1, k1 - 1 + span)  # a row needs a key at or before it, within the window
        if q0 >= q1:
            return None
        k0, k1 = max(k0, q0 - span + 1), min(k1, q1)  # a column needs a row at or after it, within the window
        if k0 >= k1:
            return None
        q0, q1, k0, k1 = int(q0), int(q1), int(k0), int(k1)
        if k1 - 1 <= q0 and q1 - 1 - k0 < span:
            return (q0, q1), (k0, k1), False, None
        if (q0, q1) == (k0, k1) and q1 - 1 - q0 < span:
            return (q0, q1), (k0, k1), True, None
        return (q0, q1), (k0, k1), False, (q0 - k0, window)


def ring_runs(order: ShardOrder, ring_rank: int, ring_size: int, seq: int) -> list[Run]:
    """Runs of the rows a ring rank holds after the Ulysses all-to-all (``seq`` of them, chunk-major:
    ``sharding/layout.py`` ``ring_positions``)."""
    if order == "contiguous":
        return [(0, ring_rank * seq, seq)]
    half = seq // 2
    return [(0, ring_rank * half, half), (half, (2 * ring_size - 1 - ring_rank) * half, half)]
