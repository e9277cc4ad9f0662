"""Shard headers: every shard carries its own ``ShardHeader`` (an int64 tensor), and the reader
refuses a shard whose header differs from the one it computes from the sample's metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from longdraft.choices import ShardOrder
from longdraft.sharding.layout import ShardLayout

HEADER_KEY = "shard_header"
"""Name of the int64 tensor that carries a shard's `ShardHeader` next to its data tensors."""


class ShardMismatchError(ValueError):
    """A shard's header or shape disagrees with what the reader computed from metadata."""


# The order travels as a fixed integer code: shards written before the rename (when the field was
# called ``layout``) read back the same, so the code table never changes, only grows.
_ORDER_CODES: dict[ShardOrder, int] = {"contiguous": 0, "zigzag": 1}
_ORDER_BY_CODE = {code: order for order, code in _ORDER_CODES.items()}


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
    order: ShardOrder
    documents: tuple[int, ...] = ()  # a packed sequence's document lengths; () for one document

    def to_tensor(self) -> torch.Tensor:
        """int64 [8 + 2*n_seg], then for a packed sequence ``[n_docs, *doc_lengths]``: travels with
        the shard's tensors through any store. One document writes the format of before packing, so
        old and new shards of unpacked samples are the same bytes."""
        head = [
            self.length,
            self.sp_size,
            self.ulysses,
            self.ring,
            self.ttt_length,
            self.rank,
            _ORDER_CODES[self.order],
            len(self.starts),
        ]
        docs = [len(self.documents), *self.documents] if self.documents else []
        return torch.tensor(head + list(self.starts) + list(self.valids) + docs, dtype=torch.int64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor, key: str = "?") -> ShardHeader:
        v = [int(x) for x in t.flatten().tolist()]
        base = 8 + 2 * v[7] if len(v) >= 8 else 0
        docs = v[base + 1 :] if len(v) > base else []
        packed_ok = len(v) == base or (len(v) > base + 1 and v[base] == len(docs))
        if len(v) < 8 or v[7] < 0 or not packed_ok or v[6] not in _ORDER_BY_CODE:
            raise ShardMismatchError(f"shard {key}: '{HEADER_KEY}' tensor {v} is not a valid shard header")
        n = v[7]
        return cls(
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            v[5],
            tuple(v[8 : 8 + n]),
            tuple(v[8 + n : 8 + 2 * n]),
            _ORDER_BY_CODE[v[6]],
            tuple(docs),
        )


def expected_header(layout: ShardLayout, r: int) -> ShardHeader:
    segs = layout.segments(r)
    return ShardHeader(
        layout.length,
        layout.sp_size,
        layout.ulysses,
        layout.ring,
        layout.ttt_length,
        r,
        tuple(s.start for s in segs),
        tuple(s.valid for s in segs),
        layout.order,
        layout.documents,
    )


def check_header(actual: ShardHeader, expected: ShardHeader, key: str = "?") -> None:
    """Refuse a shard written under a different contract; the error names both headers."""
    if actual == expected:
        return
    diff = [
        f"{f.name}={getattr(actual, f.name)} (expected {getattr(expected, f.name)})"
        for f in fields(ShardHeader)
        if getattr(actual, f.name) != getattr(expected, f.name)
    ]
    raise ShardMismatchError(
        f"shard {key}: header {actual} does not match the reader's expected header "
        f"{expected}; differing: {', '.join(diff)}"
    )


def check_shard(shard: Mapping[str, torch.Tensor], layout: ShardLayout, r: int, key: str = "?") -> None:
    """Header equals the expected one and every data tensor has ``local_length`` rows."""
    if HEADER_KEY not in shard:
        raise ShardMismatchError(f"shard {key}: no '{HEADER_KEY}' tensor; got {sorted(shard)}")
    check_header(ShardHeader.from_tensor(shard[HEADER_KEY], key), expected_header(layout, r), key)
    for name, t in shard.items():
        if name != HEADER_KEY and (t.dim() == 0 or t.shape[0] != layout.local_length):
            raise ShardMismatchError(
                f"shard {key}: tensor '{name}' has shape {tuple(t.shape)}; expected "
                f"{layout.local_length} rows (local length for {layout})"
            )
