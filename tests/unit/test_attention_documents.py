"""Documents of a packed row and sliding windows: the one-device fast path equals the reference
(outputs and every gradient), the planner skips block pairs with no allowed (query, key) pair, and
the interface refuses what it cannot honour."""

import pytest
import torch

from longdraft.attention import blocks
from longdraft.attention.blocks import BlockPlan
from longdraft.attention.factory import make_attention_backend
from longdraft.attention.reference import step0_mask, ttt_attention_reference
from longdraft.attention.ring import RingComm, block_plans, ring_hops
from longdraft.attention.ring_gather import GatheredCausal
from longdraft.attention.ttt_step import ttt_attention_fast
from longdraft.attention.visibility import KeyVisibility
from longdraft.model.draft_config import draft_config_from_target
from tests import layout_positions as shard_layout
from tests.draft_factory import tiny_target_config

TOL = 1e-5


def _inputs(seq, n_blocks, heads=4, kv_heads=2, dim=8, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda h: torch.randn(batch, h, seq, dim, generator=gen).requires_grad_()  # noqa: E731
    keys = [make(kv_heads) for _ in range(n_blocks)]
    values = [make(kv_heads) for _ in range(n_blocks)]
    return make(heads), keys, values, torch.randn(batch, heads, seq, dim, generator=gen)


def _run(fn, q, keys, values, grad_out, **kw):
    out = fn(q, keys, values, **kw)
    return out, torch.autograd.grad((out * grad_out).sum(), [q, *keys, *values])


CASES = [
    # (seq, documents, window)
    (13, (5, 1, 7), None),  # a one-token document, no padding
    (13, (4, 6), None),  # tail padding of 3
    (13, (1,), None),  # one token, the rest padding
    (13, None, 1),  # window 1: step-0 key of the query only
    (13, None, 4),
    (13, None, 40),  # window longer than the row: plain causal
    (16, (6, 1, 5), 3),  # documents and a window together, with padding
    (16, (16,), 5),
    (600, (250, 1, 300), 40),  # band pieces longer than band_tile (256): halved
]


@pytest.mark.parametrize("seq,docs,window", CASES)
@pytest.mark.parametrize("ttt_steps", [1, 3])
def test_fast_matches_reference_with_documents_and_window(seq, docs, window, ttt_steps):
    q, keys, values, grad_out = _inputs(seq, ttt_steps, seed=seq + ttt_steps)
    ref_out, ref_grads = _run(ttt_attention_reference, q, keys, values, grad_out, doc_lengths=docs, window=window)
    out, grads = _run(ttt_attention_fast, q, keys, values, grad_out, doc_lengths=docs, window=window)
    assert (out - ref_out).abs().max() < TOL
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() < TOL


def test_documents_isolate_the_step0_keys():
    # Changing the keys/values of document 0 leaves every output of document 1 unchanged.
    q, keys, values, _ = _inputs(10, 2)
    docs = (4, 6)
    before = ttt_attention_fast(q, keys, values, doc_lengths=docs)
    keys[0] = keys[0].detach().clone()
    keys[0][:, :, :4] += 5.0
    values[0] = values[0].detach().clone()
    values[0][:, :, :4] -= 3.0
    after = ttt_attention_fast(q, keys, values, doc_lengths=docs)
    assert torch.equal(before[:, :, 4:], after[:, :, 4:])
    assert (before[:, :, :4] - after[:, :, :4]).abs().max() > 1e-3


def test_reference_mask_by_hand():
    mask = step0_mask(6, (2, 3), window=2)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],  # tail padding: its own document
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_planner_cuts_per_document_and_skips_empty_pairs():
    vis = KeyVisibility((3, 1, 4))
    assert vis.plans([(0, 0, 8)], [(0, 0, 8)]) == [
        BlockPlan(slice(0, 3), slice(0, 3), True),
        BlockPlan(slice(3, 4), slice(3, 4), False),
        BlockPlan(slice(4, 8), slice(4, 8), True),
    ]
    # Queries 8..11 against keys 0..3 of other documents: nothing allowed, no kernel call.
    assert KeyVisibility((4, 8)).plans([(0, 8, 4)], [(0, 0, 4)]) == []
    # ... and against keys too far back for the window.
    assert KeyVisibility(None, 4).plans([(0, 8, 4)], [(0, 0, 4)]) == []
    # A window that reaches one key back into the earlier block: a one-row, one-column block.
    assert KeyVisibility(None, 2).plans([(0, 4, 4)], [(0, 0, 4)]) == [BlockPlan(slice(0, 1), slice(3, 4), False)]
    # A long band is halved until its inside is causal squares and only small masked blocks remain.
    assert KeyVisibility(None, 3, band_tile=2).plans([(0, 0, 9)], [(0, 0, 9)]) == [
        BlockPlan(slice(0, 2), slice(0, 2), True),
        BlockPlan(slice(2, 4), slice(0, 2), False, (2, 3)),
        BlockPlan(slice(2, 4), slice(2, 4), True),
        BlockPlan(slice(4, 6), slice(2, 4), False, (2, 3)),
        BlockPlan(slice(4, 6), slice(4, 6), True),
        BlockPlan(slice(6, 8), slice(4, 6), False, (2, 3)),
        BlockPlan(slice(6, 9), slice(6, 9), True),
    ]
    # Full blocks inside a wide band run unmasked: masked work stays along the window's edge.
    plans = KeyVisibility(None, 512, band_tile=64).plans([(0, 0, 2048)], [(0, 0, 2048)])
    masked = sum((p.rows.stop - p.rows.start) * (p.cols.stop - p.cols.start) for p in plans if p.band is not None)
    assert masked <= 2048 * 64


def test_ring_plans_skip_pairs_across_documents():
    seq = 8  # per ring rank, R = 2, contiguous: rank 0 holds 0..7, rank 1 holds 8..15
    assert block_plans("contiguous", 1, 0, seq, 2, KeyVisibility((8, 8))) == []
    assert block_plans("contiguous", 1, 0, seq, 2, KeyVisibility((6, 10))) == [
        BlockPlan(slice(0, 8), slice(6, 8), False)
    ]
    # Plain visibility is the original plan, unchanged.
    assert block_plans("zigzag", 1, 0, seq, 2, KeyVisibility()) == [BlockPlan(slice(None), slice(0, 4), False)]


def test_gathered_blocks_with_no_allowed_pair_run_no_kernel(monkeypatch):
    # Ring rank 1 of 2 (no communication in the gathered forward): with a document boundary at the
    # rank boundary the earlier rank's block is skipped, so only the own block runs.
    calls = []
    real = blocks.block_attention_forward
    monkeypatch.setattr(
        blocks, "block_attention_forward", lambda *a, **kw: calls.append(a[0].shape[2]) or real(*a, **kw)
    )
    q, keys, values, _ = _inputs(16, 1)
    k_all = torch.stack([keys[0][:, :, :8], keys[0][:, :, 8:]]).detach()
    v_all = torch.stack([values[0][:, :, :8], values[0][:, :, 8:]]).detach()
    causal = GatheredCausal(RingComm(None, 2, 1), "contiguous", KeyVisibility((8, 8)))
    out, lse = causal.forward(q[:, :, 8:].detach(), k_all, v_all, 0.125)
    assert calls == [8]
    ref = ttt_attention_reference(q, keys, values, scale=0.125, doc_lengths=(8, 8))
    assert (out - ref[:, :, 8:]).abs().max() < TOL
    calls.clear()
    GatheredCausal(RingComm(None, 2, 1), "contiguous", KeyVisibility((6, 10))).forward(
        q[:, :, 8:].detach(), k_all, v_all, 0.125
    )
    assert calls == [8, 8]  # the spanning document needs the earlier block


def test_backend_interface():
    backend = make_attention_backend("fast", window=3)
    docs = backend.with_documents((4, 5))
    assert docs is not backend and backend.with_documents(None) is backend
    q, keys, values, _ = _inputs(9, 2)
    expected = ttt_attention_reference(q, keys, values, doc_lengths=(4, 5), window=3)
    assert (
        docs.finish(docs.attend(*docs.prepare(q, keys[0], values[0])[:1], keys, values)) - expected
    ).abs().max() < TOL
    ref_backend = make_attention_backend("reference", window=3).with_documents((4, 5))
    assert (ref_backend.attend(q, keys, values) - expected).abs().max() < TOL


def test_documents_longer_than_the_row_are_refused():
    q, keys, values, _ = _inputs(6, 1)
    with pytest.raises(ValueError, match="more than the row"):
        ttt_attention_fast(q, keys, values, doc_lengths=(4, 3))
    with pytest.raises(ValueError, match="window"):
        make_attention_backend("fast", window=0)
    with pytest.raises(ValueError, match="lengths >= 1"):
        make_attention_backend("fast").with_documents((3, 0))


def _scored_pairs(vis: KeyVisibility, layout: str, U: int, R: int, L: int, ring: int) -> list[tuple[int, int]]:
    """(query, key) global pairs that ring rank ``ring``'s planned kernel calls let through."""
    pos = [shard_layout.ring_positions(L, U, R, p, layout) for p in range(R)]
    seq = pos[ring].numel()
    pairs = []
    for src in range(R):
        for plan in block_plans(layout, ring, src, seq, R, vis):
            qs, ks = pos[ring][plan.rows].tolist(), pos[src][plan.cols].tolist()
            allowed = torch.ones(len(qs), len(ks), dtype=torch.bool)
            if plan.band is not None:
                allowed = blocks.band_bias(len(qs), len(ks), plan.band, torch.float32, "cpu") == 0
            elif plan.causal:
                allowed = allowed.tril()
            assert bool(allowed.any(dim=1).all()), f"{plan}: a planned row sees no key"
            pairs += [(qs[i], ks[j]) for i, j in allowed.nonzero().tolist()]
    return pairs


@pytest.mark.parametrize("layout", shard_layout.SHARD_ORDERS)
@pytest.mark.parametrize("U,R,L", [(1, 1, 13), (1, 2, 18), (2, 2, 19), (1, 4, 23)])
@pytest.mark.parametrize(
    "docs,window,tile",
    [((5, 1, 6), None, 256), ((9,), None, 256), (None, 3, 256), (None, 2, 1), ((4, 1, 7), 5, 256), ((2, 10), 3, 2)],
)
def test_plans_score_exactly_the_allowed_pairs(layout, U, R, L, docs, window, tile):
    # Every allowed (query, key) pair once, nothing else: documents spanning ranks, one-token
    # documents, tail padding (its own document), windows shorter and longer than a shard, band
    # pieces halved into smaller ones.
    vis = KeyVisibility(docs, window, tile)
    padded = shard_layout.padded_length(L, U, R, layout)
    mask = step0_mask(padded, docs, window)
    for ring in range(R):
        pairs = _scored_pairs(vis, layout, U, R, L, ring)
        assert len(pairs) == len(set(pairs)), "a (query, key) pair is scored twice"
        queries = shard_layout.ring_positions(L, U, R, ring, layout).tolist()
        assert set(pairs) == {(q, k) for q in queries for k in range(padded) if mask[q, k]}


def test_documents_need_a_single_packed_row():
    q, keys, values, _ = _inputs(6, 1, batch=2)
    for name in ("fast", "reference"):
        with pytest.raises(ValueError, match="one packed row"):
            make_attention_backend(name).with_documents((3, 3)).attend(q, keys, values)


def test_draft_config_carries_the_window_for_the_export():
    assert draft_config_from_target(tiny_target_config(), sliding_window=16).sliding_window == 16
    assert draft_config_from_target(tiny_target_config()).sliding_window is None


def test_fast_matches_reference_bf16_with_documents_and_window():
    # bf16 rounds each block's output and gradients (u = 2^-8); as for plain attention, a handful
    # of roundings bound the error relative to each tensor's largest value by 2^-5.
    gen = torch.Generator().manual_seed(7)
    make = lambda h: torch.randn(1, h, 96, 16, generator=gen).bfloat16().requires_grad_()  # noqa: E731
    q, keys, values = make(4), [make(2) for _ in range(3)], [make(2) for _ in range(3)]
    grad_out = torch.randn(1, 4, 96, 16, generator=gen)
    kw = dict(doc_lengths=(40, 1, 45), window=20)
    ref_out, ref_grads = _run(ttt_attention_reference, q, keys, values, grad_out, **kw)
    out, grads = _run(ttt_attention_fast, q, keys, values, grad_out, **kw)
    for a, b in zip((out, *grads), (ref_out, *ref_grads)):
        assert (a.float() - b.float()).abs().max() <= 2.0**-5 * b.float().abs().max()


def test_the_ring_stops_after_the_last_hop_any_rank_needs():
    assert ring_hops("contiguous", 4, 5, KeyVisibility()) == 4
    assert ring_hops("contiguous", 4, 5, KeyVisibility(None, 3)) == 2  # the previous rank's block only
    assert ring_hops("contiguous", 4, 5, KeyVisibility(None, 6)) == 2
    assert ring_hops("contiguous", 4, 5, KeyVisibility(None, 7)) == 3  # query 5r sees key 5r - 6
    assert ring_hops("contiguous", 2, 9, KeyVisibility((9, 9))) == 1  # documents end at the rank boundary
    assert ring_hops("zigzag", 2, 10, KeyVisibility((9, 9))) == 2
