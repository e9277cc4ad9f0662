"""Draft-vocab mapping: top-k of loss-masked token counts, tie-break, padding, d2t/t2d round trip."""

from __future__ import annotations

import pytest
import torch

from longdraft.data.dataset import Sample
from longdraft.data.loss_mask import pack_loss_mask
from longdraft.data.vocab import VocabMapping, build_vocab_mapping, count_loss_tokens


def sample(ids: list[int], mask: list[int], name: str = "s") -> Sample:
    return Sample(name, ids, pack_loss_mask(mask), sum(mask))


def check_round_trip(m: VocabMapping) -> None:
    d = torch.arange(m.draft_vocab_size)
    target = d + m.d2t
    assert m.d2t.dtype == torch.int64 and m.t2d.dtype == torch.bool and m.draft_to_target.dtype == torch.int64
    assert torch.equal(target, m.draft_to_target)
    assert bool(m.t2d[target].all())  # t2d[i + d2t[i]] for every draft id i
    assert int(m.t2d.sum()) == m.draft_vocab_size
    assert bool((target[1:] > target[:-1]).all())  # sorted by target id
    # Draft id i is the rank of its target id among the kept target ids.
    assert torch.equal(torch.cumsum(m.t2d.long(), 0)[target] - 1, d)


def test_counts_only_loss_masked_positions():
    s = [sample([5, 5, 7, 9, 9, 9], [0, 1, 1, 0, 0, 1]), sample([7, 3], [1, 1])]
    counts = count_loss_tokens(s, 10)
    assert counts.tolist() == [0, 0, 0, 1, 0, 1, 0, 2, 0, 1]


def test_top_k_and_sorted_by_target_id():
    # counts: 8 -> 4, 2 -> 3, 6 -> 2, 1 -> 1
    s = [sample([8, 8, 8, 8, 2, 2, 2, 6, 6, 1, 4, 4, 4], [1] * 10 + [0, 0, 0])]
    m = build_vocab_mapping(s, target_vocab_size=12, draft_vocab_size=3)
    assert m.draft_to_target.tolist() == [2, 6, 8]
    assert m.d2t.tolist() == [2, 5, 6]
    assert m.t2d.nonzero().flatten().tolist() == [2, 6, 8]
    assert m.token_counts[8] == 4 and m.token_counts[4] == 0
    check_round_trip(m)


def test_ties_go_to_the_lower_id():
    s = [sample([9, 3, 7, 5, 5], [1, 1, 1, 1, 1])]  # 5 -> 2; 3, 7, 9 -> 1 each
    m = build_vocab_mapping(s, target_vocab_size=10, draft_vocab_size=3)
    assert m.draft_to_target.tolist() == [3, 5, 7]
    check_round_trip(m)


def test_padding_with_lowest_unused_ids():
    s = [sample([4, 4, 9], [1, 1, 1]), sample([0, 2], [0, 0])]
    m = build_vocab_mapping(s, target_vocab_size=12, draft_vocab_size=5)
    assert m.draft_to_target.tolist() == [0, 1, 2, 4, 9]  # 4, 9 seen; 0, 1, 2 fill up
    check_round_trip(m)


def test_identity_and_errors():
    s = [sample([1, 2], [1, 1])]
    for m in (build_vocab_mapping(s, 6, 6), build_vocab_mapping(s, 6, None)):
        assert m.is_identity and m.d2t.tolist() == [0] * 6 and bool(m.t2d.all())
        check_round_trip(m)
    with pytest.raises(ValueError, match="draft_vocab_size=7"):
        build_vocab_mapping(s, 6, 7)
    with pytest.raises(ValueError, match="token id 6 is outside"):
        build_vocab_mapping([sample([6], [1], "f.jsonl:3")], 6, 3)


def test_random_round_trip():
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(20):
        ids = torch.randint(0, 500, (50,), generator=g)
        mask = (torch.rand(50, generator=g) < 0.5).long()
        samples.append(sample(ids.tolist(), mask.tolist(), f"r:{i}"))
    m = build_vocab_mapping(samples, 500, 64)
    check_round_trip(m)
    counts = count_loss_tokens(samples, 500)
    chosen, rest = counts[m.t2d], counts[~m.t2d]
    assert chosen.min() >= rest.max()  # nothing left out is more frequent than something kept
    boundary = int(chosen.min())
    ids = torch.arange(500)
    kept_at_boundary = ids[m.t2d & (counts == boundary)]
    left_at_boundary = ids[~m.t2d & (counts == boundary)]
    if left_at_boundary.numel():
        assert kept_at_boundary.max() < left_at_boundary.min()
