"""The shard contract with documents: packed layouts, headers, per-rank document ids and
positions, packed features and masks, and the micro-batch plan."""

import itertools

import pytest
import torch

from longdraft.data.loss_mask import pack_loss_mask, unpack_loss_mask
from longdraft.sharding.batch import attention_pairs
from longdraft.sharding.header import ShardHeader, ShardMismatchError, check_shard, expected_header
from longdraft.sharding.layout import ShardGrid, ShardLayout
from longdraft.sharding.packing import pack_features, pack_loss_masks, plan_micro_batches
from longdraft.sharding.reader import read_shard
from longdraft.sharding.split import split_sample

DOCS = [(1,), (3, 1, 5), (7, 1), (1, 1, 1, 1), (13, 2, 9, 1, 6), (40, 3, 1)]
GRIDS = [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 3)]


def _doc_of(docs, p):
    for d, (start, n) in enumerate(zip(itertools.accumulate((0, *docs)), docs)):
        if start <= p < start + n:
            return d, p - start
    return -1, None


@pytest.mark.parametrize("order", ["contiguous", "zigzag"])
def test_every_rank_rebuilds_document_ids_and_positions_from_the_layout(order: str) -> None:
    for docs, (u, r), k in itertools.product(DOCS, GRIDS, [0, 1, 3]):
        layout = ShardGrid(u, r, k, order).for_documents(docs)
        assert layout.length == sum(docs)
        for rank in range(layout.sp_size):
            pos, ids, within = (
                layout.local_positions(rank),
                layout.local_doc_ids(rank),
                layout.local_doc_positions(rank),
            )
            for p, d, w in zip(pos.tolist(), ids.tolist(), within.tolist()):
                want_d, want_w = _doc_of(docs, p)
                assert d == want_d
                if want_w is not None:
                    assert w == want_w  # positions restart at 0 in every document
            assert torch.equal(layout.query_positions(rank), within[layout.query_mask(rank)])


def test_one_document_is_the_unpacked_layout() -> None:
    grid = ShardGrid(2, 2, 3, "zigzag")
    assert grid.for_documents([37]) == grid.for_length(37)
    plain = grid.for_length(37)
    for r in range(4):  # unpacked, RoPE positions stay the global ones
        assert torch.equal(plain.query_positions(r), plain.local_positions(r)[plain.query_mask(r)])
        assert torch.equal(
            expected_header(grid.for_documents([37]), r).to_tensor(),
            expected_header(grid.for_length(37), r).to_tensor(),
        )


def test_layout_refuses_documents_that_do_not_cover_the_sequence() -> None:
    with pytest.raises(ValueError, match="sum to L=10"):
        ShardLayout(10, 1, 1, 2, documents=(4, 5))
    with pytest.raises(ValueError, match=">= 1"):
        ShardLayout(10, 1, 1, 2, documents=(10, 0))
    with pytest.raises(ValueError, match="at least one document"):
        ShardGrid(1, 1, 2).for_documents([])


def test_header_carries_documents_and_the_reader_refuses_other_boundaries() -> None:
    grid = ShardGrid(2, 1, 2)
    packed = grid.for_documents([5, 3, 4])
    for r in range(2):
        header = expected_header(packed, r)
        assert header.documents == (5, 3, 4)
        assert ShardHeader.from_tensor(header.to_tensor()) == header
    sample = {"input_ids": torch.arange(12), "aux_hidden": torch.randn(12, 6), "last_hidden": torch.randn(12, 2)}
    shards = split_sample(sample, packed)
    check_shard(shards[1], packed, 1)
    with pytest.raises(ShardMismatchError, match="documents"):
        check_shard(shards[1], grid.for_documents([5, 4, 3]), 1)  # same L, other boundaries
    with pytest.raises(ShardMismatchError, match="documents"):
        check_shard(shards[1], grid.for_length(12), 1)  # a packed shard read as one sample
    unpacked = split_sample(sample, grid.for_length(12))
    with pytest.raises(ShardMismatchError, match="documents"):
        check_shard(unpacked[0], packed, 0)
    bad = expected_header(packed, 0).to_tensor().clone()
    bad[-4] = 4  # document count disagrees with the tensor's length
    with pytest.raises(ShardMismatchError, match="not a valid shard header"):
        ShardHeader.from_tensor(bad)


def test_old_headers_read_as_one_document() -> None:
    layout = ShardGrid(1, 2, 3).for_length(20)
    t = expected_header(layout, 1).to_tensor()
    assert t.numel() == 8 + 2 * layout.num_segments  # the format of before packing, byte for byte
    assert ShardHeader.from_tensor(t).documents == ()


def test_read_shard_of_a_packed_sequence() -> None:
    docs = [
        {"input_ids": torch.arange(n) + 100 * i, "aux_hidden": torch.randn(n, 6), "last_hidden": torch.randn(n, 2)}
        for i, n in enumerate([4, 1, 6])
    ]
    masks = [[1, 3], [0, 1], [4, 5, 0]]  # the last one is longer than its document: truncated
    sample = pack_features(docs)
    assert torch.equal(sample["input_ids"], torch.cat([d["input_ids"] for d in docs]))
    packed_mask = pack_loss_masks(masks, [4, 1, 6])
    assert unpack_loss_mask(packed_mask).tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1]
    layout = ShardGrid(1, 2, 2, "zigzag").for_documents([4, 1, 6])
    shards = split_sample(sample, layout)
    for r in range(2):
        batch = read_shard(shards[r], layout, r, packed_mask)
        assert batch.documents == ((4, 1, 6),)
        assert torch.equal(batch.doc_ids.flatten(), layout.local_doc_ids(r))
        assert torch.equal(batch.positions, layout.query_positions(r))


def test_pack_features_refuses_mismatched_documents() -> None:
    with pytest.raises(ValueError, match="row counts"):
        pack_features([{"input_ids": torch.arange(3), "aux_hidden": torch.randn(2, 4)}])
    with pytest.raises(ValueError, match="document 1 has tensors"):
        pack_features([{"input_ids": torch.arange(3)}, {"ids": torch.arange(3)}])
    assert pack_loss_masks([], []) == []
    assert pack_loss_masks([pack_loss_mask([1, 1])], [2]) == [0, 2]


def test_plan_is_first_fit_decreasing_with_whole_documents() -> None:
    lengths = [5, 30, 2, 9, 12, 1, 8]
    bins = plan_micro_batches(lengths, budget=16)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # every document once
    assert bins[0] == [1]  # longer than the budget: a micro-batch of its own
    for b in bins[1:]:
        assert sum(lengths[i] for i in b) <= 16
    assert bins == [[1], [4, 2, 5], [3, 0], [6]]
    with pytest.raises(ValueError, match="budget"):
        plan_micro_batches(lengths, 0)


@pytest.mark.parametrize("order", ["contiguous", "zigzag"])
def test_attention_pairs_are_the_causal_pairs_inside_each_document(order: str) -> None:
    docs = [9, 1, 30, 4]
    sample = {"input_ids": torch.arange(44), "aux_hidden": torch.randn(44, 6), "last_hidden": torch.randn(44, 2)}
    want = sum(n * (n + 1) // 2 for n in docs)  # not 44 * 45 / 2: no pair crosses a document
    for u, r in [(1, 1), (2, 1), (2, 2), (1, 4)]:
        layout = ShardGrid(u, r, 2, order).for_documents(docs)
        shards = split_sample(sample, layout)
        per_rank = [attention_pairs(read_shard(s, layout, i, [0, 44])) for i, s in enumerate(shards)]
        assert sum(per_rank) == want, (u, r, per_rank)
        windowed = [attention_pairs(read_shard(s, layout, i, [0, 44]), window=5) for i, s in enumerate(shards)]
        assert sum(windowed) == sum(sum(min(p + 1, 5) for p in range(n)) for n in docs)


def test_ulysses_ranks_share_their_groups_attention_work() -> None:
    from longdraft.train.step import attention_work

    work = attention_work([10, 30, 20, 20], ulysses=2)
    assert work["attention_pairs"] == [20, 20, 20, 20] and work["attention_imbalance"] == 0
    work = attention_work([10, 30, 20, 20], ulysses=1)
    assert work["attention_imbalance"] == pytest.approx(30 / 20 - 1)


def test_balanced_order_evens_the_ring_ranks_work() -> None:
    from longdraft.sharding.packing import balanced_order, ring_work

    grid = ShardGrid(2, 2, 3, "zigzag")
    lengths = [3500, 300, 120, 90, 60, 26]  # one long document and short ones: zigzag alone is uneven
    first = ring_work(grid.for_documents(sorted(lengths, reverse=True)))
    order = balanced_order(lengths, grid)
    assert sorted(order) == list(range(len(lengths)))  # a permutation: the same documents
    work = ring_work(grid.for_documents([lengths[i] for i in order]))
    assert sum(work) == sum(first) == sum(n * (n + 1) // 2 for n in lengths)
    assert max(first) / (sum(first) / 2) - 1 > 0.25  # longest first: > 25 % imbalance
    assert max(work) / (sum(work) / 2) - 1 < 0.05
    assert balanced_order(lengths, ShardGrid(4, 1, 3)) == [0, 1, 2, 3, 4, 5]  # no ring: longest first


def test_a_packed_row_is_never_stacked_with_another() -> None:
    from longdraft.sharding.batch import stack_batches
    from longdraft.sharding.reader import packed_sequence_batch

    docs = [
        {"input_ids": torch.arange(n), "aux_hidden": torch.randn(n, 6), "last_hidden": torch.randn(n, 2)}
        for n in (3, 4)
    ]
    one = packed_sequence_batch(docs, [[0, 3], [0, 4]], 2)
    assert stack_batches([one]).documents == ((3, 4),)
    with pytest.raises(ValueError, match="batch size 1"):
        stack_batches([one, one])  # one positions vector cannot serve two rows of other documents
