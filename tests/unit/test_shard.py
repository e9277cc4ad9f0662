"""The shard contract: writer and reader agree for many (L, U, R, K, layout)."""

import itertools

import pytest
import torch

from longdraft.data.loss_mask import pack_loss_mask, unpack_loss_mask
from longdraft.sharding.header import (
    HEADER_KEY,
    ShardHeader,
    ShardMismatchError,
    check_header,
    check_shard,
    expected_header,
)
from longdraft.sharding.layout import ShardLayout
from longdraft.sharding.reader import local_loss_mask, should_skip
from longdraft.sharding.split import split_sample, split_tensor
from tests.layout_positions import gather_shards

LENGTHS = [1, 2, 3, 5, 7, 8, 13, 16, 31, 64, 97]
GRIDS = [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 3), (2, 3), (4, 2)]  # (U, R)
ORDERS = ["contiguous", "zigzag"]
CASES = [ShardLayout(L, U, R, K, lay) for L, (U, R), K, lay in itertools.product(LENGTHS, GRIDS, [0, 1, 3, 7], ORDERS)]


def _positions_tensor(length: int) -> torch.Tensor:
    """Row i holds (i + 1, -(i + 1)): every real row is non-zero, padding rows are zero."""
    v = torch.arange(1, length + 1, dtype=torch.int64)
    return torch.stack([v, -v], dim=1)


@pytest.mark.parametrize("order", ORDERS)
def test_writer_and_reader_agree(order: str) -> None:
    for layout in CASES:
        if layout.order == order:
            _check_agreement(layout)


def _check_agreement(layout: ShardLayout) -> None:
    L, n, K = layout.length, layout.segment_queries, layout.ttt_length
    x = _positions_tensor(L)
    shards = [split_tensor(x, layout, r) for r in range(layout.sp_size)]

    all_queries = []
    for r, local in enumerate(shards):
        assert local.shape == (layout.local_length, 2)
        pos = layout.local_positions(r)
        # every local row is the global row at its position, or zero past the global tail
        want = torch.where((pos < L).unsqueeze(1), x[pos.clamp(max=L - 1)], torch.zeros_like(local))
        assert torch.equal(local, want)
        for i, seg in enumerate(layout.segments(r)):
            block = local[i * layout.segment_length : (i + 1) * layout.segment_length]
            # the K lookahead rows are exactly the next global positions after the queries
            for j in range(K):
                p = seg.start + n + j
                assert torch.equal(block[n + j], x[p] if p < L else torch.zeros(2, dtype=x.dtype))
            # TTT step k at local query t reads row t+k+1: always the global row pos(t)+k+1
            for t, k in itertools.product(range(n), range(K)):
                p = seg.start + t + k + 1
                if p < L:
                    assert torch.equal(block[t + k + 1], x[p])
        all_queries.append(layout.query_positions(r))

    queries = torch.cat(all_queries)
    # each position 0..L-1 is a query exactly once; padding is the global tail [L, padded) only
    assert torch.equal(queries.sort().values, torch.arange(layout.padded_length))
    assert torch.equal(gather_shards(shards, layout), x)


def test_ring_positions_are_the_ulysses_group_queries() -> None:
    for layout in CASES:
        if layout.ttt_length == 3:
            _check_ring_positions(layout)


def _check_ring_positions(layout: ShardLayout) -> None:
    U = layout.ulysses
    for q in range(layout.ring):
        group = torch.cat([layout.query_positions(q * U + u) for u in range(U)])
        ring = layout.ring_positions(q)
        if layout.order == "contiguous":
            assert torch.equal(ring, group)  # a plain concatenation over u
            assert torch.equal(ring, torch.arange(q * U * layout.segment_queries, (q + 1) * U * layout.segment_queries))
        else:
            assert torch.equal(ring.sort().values, group.sort().values)
            assert torch.equal(
                ring[: U * layout.segment_queries].diff(), torch.ones(U * layout.segment_queries - 1, dtype=torch.int64)
            )


def test_worked_example_and_empty_shard() -> None:
    lay = ShardLayout(10000, 2, 2, 7)
    assert (lay.segment_queries, lay.local_length) == (2500, 2507)
    assert [s.start for r in range(4) for s in lay.segments(r)] == [0, 2500, 5000, 7500]
    assert lay.segments(3)[0].valid == 2500 and lay.segments(2)[0].valid == 2507
    assert torch.equal(lay.ring_positions(1), torch.arange(5000, 10000))
    # L=5, S=4: C=2, rank 3 starts at 6 > 5: all padding, still the common local length
    tiny = ShardLayout(5, 4, 1, 2)
    assert tiny.segments(3)[0].valid == 0 and tiny.local_length == 4
    assert not split_tensor(torch.arange(1, 6), tiny, 3).any()
    zig = ShardLayout(16, 2, 2, 1, "zigzag")  # c=2, chunks of 4: q0 has [0,4) and [12,16)
    assert [s.start for s in zig.segments(1)] == [2, 14] and [s.valid for s in zig.segments(1)] == [3, 2]
    assert zig.local_length == 6


def test_writer_truncates_rows_past_the_global_length() -> None:
    lay = ShardLayout(4, 2, 1, 1)
    long = torch.arange(1, 11)  # rows past L are dropped by the writer
    assert torch.equal(gather_shards([split_tensor(long, lay, r) for r in range(2)], lay), long[:4])
    with pytest.raises(ValueError, match="fewer than L=4"):
        split_tensor(torch.ones(3), lay, 0)


def test_header_round_trip_and_tamper_refused() -> None:
    lay = ShardLayout(13, 2, 2, 3, "zigzag")
    sample = {"input_ids": torch.arange(13), "aux_hidden": torch.randn(13, 6)}
    shards = split_sample(sample, lay)
    for r, shard in enumerate(shards):
        check_shard(shard, lay, r, key=f"s_usp{r}")
        assert ShardHeader.from_tensor(shard[HEADER_KEY]) == expected_header(lay, r)

    # a reader that computed a different L (e.g. another max_seq_length) refuses the shard
    other = ShardLayout(14, 2, 2, 3, "zigzag")
    with pytest.raises(ShardMismatchError) as err:
        check_shard(shards[1], other, 1, key="s_usp1")
    msg = str(err.value)
    assert "s_usp1" in msg and "length=13 (expected 14)" in msg
    assert str(expected_header(lay, 1)) in msg and str(expected_header(other, 1)) in msg

    tampered = dict(shards[2])
    h = tampered[HEADER_KEY].clone()
    h[5] = 0  # claims to be rank 0
    tampered[HEADER_KEY] = h
    with pytest.raises(ShardMismatchError, match="rank=0 \\(expected 2\\)"):
        check_shard(tampered, lay, 2)
    with pytest.raises(ShardMismatchError, match="order=contiguous \\(expected zigzag\\)"):
        check_header(expected_header(ShardLayout(13, 2, 2, 3), 0), expected_header(lay, 0))
    short = dict(shards[0], aux_hidden=shards[0]["aux_hidden"][:-1])
    with pytest.raises(ShardMismatchError, match="aux_hidden"):
        check_shard(short, lay, 0)
    with pytest.raises(ShardMismatchError, match="not a valid shard header"):
        ShardHeader.from_tensor(torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("order", ["contiguous", "zigzag"])
def test_local_loss_mask_matches_global_mask(order: str) -> None:
    g = torch.Generator().manual_seed(0)
    full = (torch.rand(40, generator=g) > 0.5).long()
    packed = pack_loss_mask(full)
    for L in (40, 29, 45):  # equal, truncated, zero-padded past the stored mask
        lay = ShardLayout(L, 2, 2, 3, order)
        global_mask = unpack_loss_mask(packed, L)
        for r in range(lay.sp_size):
            local = local_loss_mask(packed, lay, r)
            assert torch.equal(local, split_tensor(global_mask, lay, r))
            pos = lay.local_positions(r)
            want = torch.where(pos < min(L, 40), full[pos.clamp(max=39)], torch.zeros_like(pos))
            assert torch.equal(local, want)


def test_skip_decision_is_global() -> None:
    # all loss tokens sit in the last quarter: rank 0's local mask is empty, but nobody skips
    mask = [0] * 30 + [1] * 10
    packed = pack_loss_mask(mask)
    lay = ShardLayout(40, 2, 2, 1)
    assert local_loss_mask(packed, lay, 0).sum() == 0
    assert not should_skip(packed, min_loss_tokens=5, length=40)
    assert should_skip(packed, min_loss_tokens=11, length=40)
    assert should_skip(packed, min_loss_tokens=5, length=32)  # truncation leaves 2 loss tokens
    assert should_skip([5], min_loss_tokens=0, length=5)  # no loss token at all: always skipped
    assert not should_skip([0, 1], min_loss_tokens=0, length=1)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="'diagonal'"):
        ShardLayout(8, 1, 1, 1, "diagonal")
    with pytest.raises(ValueError, match="L=0"):
        ShardLayout(0, 1, 1, 1)
    with pytest.raises(ValueError, match="SP rank 4 is outside"):
        ShardLayout(8, 2, 2, 1).segments(4)
    with pytest.raises(ValueError, match="reserved"):
        split_sample({HEADER_KEY: torch.zeros(8)}, ShardLayout(8, 1, 1, 1))


def test_header_order_codes_are_the_on_wire_ones() -> None:
    """The order travels as a fixed code (0 contiguous, 1 zigzag), as before the field was renamed
    from ``layout``: shards written by an older writer still read back."""
    for order, code in (("contiguous", 0), ("zigzag", 1)):
        header = expected_header(ShardLayout(13, 2, 2, 3, order), 1)
        assert int(header.to_tensor()[6]) == code
        assert ShardHeader.from_tensor(header.to_tensor()).order == order
