"""USP attention with packed documents and sliding windows equals the one-device reference on gloo
ranks: outputs and every gradient within 1e-5 (fp32), for (U, R) = (2, 1), (1, 2), (2, 2), (1, 4),
contiguous and zigzag, ring and gathered K/V; and a windowed draft's whole TTT unroll equals the
one-device unroll. One spawn per world size runs all its cases."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from longdraft.attention.factory import make_attention_backend
from longdraft.attention.reference import ttt_attention_reference
from longdraft.attention.usp import USPAttentionBackend
from longdraft.parallel.mesh import USPMesh
from longdraft.parallel.reduction import SumReducer
from longdraft.sharding.layout import ShardLayout
from tests import layout_positions as shard_layout
from tests.distributed.test_usp_draft import K as DRAFT_K
from tests.distributed.test_usp_draft import _shard, _unroll
from tests.draft_factory import batch_of, random_samples, tiny_draft
from tests.rank_runs import cached_run_ranks

TOL = 1e-5
L, TTT, HEADS, KV_HEADS, DIM = 18, 2, 4, 2, 8
# (name, documents, window). Shards hold 9 (R = 2, U = 1) down to 4-5 positions: documents span
# shard boundaries, a one-token document, tail padding, windows shorter and longer than a shard.
SCENARIOS = [
    ("docs-padding", (7, 1, 6), None),
    ("window-small", None, 3),
    ("window-large", None, 11),
    ("docs-window", (10, 1, 5), 4),
    ("docs-large-window", (3, 15), 9),
    ("docs-at-rank-boundary", (9, 9), None),  # contiguous R = 2: rank 1 never needs rank 0's block
]
GRIDS = {  # world -> (U, R, order, ring mode)
    2: [
        (2, 1, "contiguous", "ring"),
        (2, 1, "zigzag", "ring"),
        (1, 2, "contiguous", "ring"),
        (1, 2, "zigzag", "ring"),
        (1, 2, "contiguous", "gather"),
        (1, 2, "zigzag", "gather"),
    ],
    4: [
        (2, 2, "contiguous", "ring"),
        (2, 2, "zigzag", "ring"),
        (2, 2, "contiguous", "gather"),
        (2, 2, "zigzag", "gather"),
        (1, 4, "contiguous", "ring"),  # a short window: the ring stops after 2 of 4 hops
        (1, 4, "zigzag", "ring"),
    ],
}
DRAFT_CASES = {2: [(1, 2, "zigzag", 14, 3)], 4: [(2, 2, "contiguous", 19, 4)]}  # (U, R, order, L, window)


def _attention_case(mesh: USPMesh, grid, docs, window, seed: int) -> dict:
    U, R, order, ring_mode = grid
    gen = torch.Generator().manual_seed(seed)
    rand = lambda h: torch.randn(1, h, L, DIM, generator=gen).requires_grad_()  # noqa: E731
    full_q = [rand(HEADS) for _ in range(TTT)]
    full_k = [rand(KV_HEADS) for _ in range(TTT)]
    full_v = [rand(KV_HEADS) for _ in range(TTT)]
    weights = [torch.randn(1, HEADS, L, DIM, generator=gen) for _ in range(TTT)]
    ref_out, ref_loss = [], 0.0
    for k in range(TTT):
        out = ttt_attention_reference(full_q[k], full_k[: k + 1], full_v[: k + 1], doc_lengths=docs, window=window)
        ref_out.append(out.detach())
        ref_loss = ref_loss + (out * weights[k]).sum()
    ref_loss.backward()

    sp = mesh.coords.sp_rank
    shard = lambda t: shard_layout.scatter_sequence(t.detach(), U, R, order, dim=2)[sp]  # noqa: E731
    loc_q, loc_k, loc_v = ([shard(t).requires_grad_() for t in ts] for ts in (full_q, full_k, full_v))
    backend = USPAttentionBackend(mesh, HEADS, KV_HEADS, order=order, ring_mode=ring_mode, window=window)
    backend = backend.with_documents(docs)
    valid = shard_layout.query_positions(L, U, R, sp, order) < L
    keys, values, loss, out_err = [], [], 0.0, 0.0
    for k in range(TTT):
        q, kk, vv = backend.prepare(loc_q[k], loc_k[k], loc_v[k])
        keys.append(kk)
        values.append(vv)
        out = backend.finish(backend.attend(q, keys, values))
        out_err = max(out_err, (out[:, :, valid] - shard(ref_out[k])[:, :, valid]).abs().max().item())
        loss = loss + (out * shard(weights[k])).sum()
    loss.backward()
    grad_err = max(
        (local.grad - shard(full.grad)).abs().max().item()
        for local, full in zip(loc_q + loc_k + loc_v, full_q + full_k + full_v)
    )
    return {"out": out_err, "grad": grad_err}


def _draft_case(rank: int, case) -> dict:
    # A windowed draft's whole unroll (loss and every parameter gradient) against one device.
    u, r, order, length, window = case
    model, head = tiny_draft(num_attention_heads=4, num_key_value_heads=2)
    sample = random_samples([length], seed=length)[0]
    mesh = USPMesh.build(u, r, 4, 2)
    layout = ShardLayout(length, u, r, DRAFT_K, order)
    reference = make_attention_backend("reference", window=window)
    ref_loss, ref_grads = _unroll(model, head, batch_of([sample], DRAFT_K), reference, SumReducer(None), False)
    full_loss, _ = _unroll(
        model, head, batch_of([sample], DRAFT_K), make_attention_backend("reference"), SumReducer(None), False
    )
    result = {"window_changes_loss": abs(full_loss - ref_loss)}
    for ring_mode in ("ring", "gather"):
        backend = USPAttentionBackend(mesh, 4, 2, order, ring_mode=ring_mode, window=window)
        loss, grads = _unroll(
            model, head, _shard(sample, layout, rank), backend, SumReducer(dist.group.WORLD), False, False
        )
        result[ring_mode] = {
            "loss": abs(loss - ref_loss) / max(1.0, abs(ref_loss)),
            "grad": max((grads[n] - g).abs().max().item() for n, g in ref_grads.items()),
        }
    return result


def _worker(rank: int, world: int) -> dict:
    torch.set_num_threads(1)
    meshes: dict = {}
    results = {}
    for g, grid in enumerate(GRIDS[world]):
        mesh = meshes.setdefault(grid[:2], None) or USPMesh.build(grid[0], grid[1])
        meshes[grid[:2]] = mesh
        for s, (name, docs, window) in enumerate(SCENARIOS):
            results[(grid, name)] = _attention_case(mesh, grid, docs, window, seed=10 * g + s)
    for case in DRAFT_CASES[world]:
        results[("draft", case)] = _draft_case(rank, case)
    results["refusals"] = _refusals(meshes[GRIDS[world][0][:2]])
    return results


def _refusals(mesh: USPMesh) -> list[str]:
    """What ``attend`` refuses before any collective: documents over a batch of rows, documents
    longer than the row."""
    backend = USPAttentionBackend(mesh, HEADS, KV_HEADS)
    seq = 8  # a prepared (ring-local) length
    heads = HEADS // mesh.ulysses_size
    messages = []
    for batch, docs in ((2, (3, 3)), (1, (seq * mesh.ring_size, 1))):
        x = torch.zeros(batch, heads, seq, DIM)
        try:
            backend.with_documents(docs).attend(x, [x], [x])
            messages.append("accepted")
        except ValueError as err:
            messages.append(str(err))
    return messages


def _results(world: int) -> list[dict]:
    return cached_run_ranks(_worker, world, timeout_s=200)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("scenario", [s[0] for s in SCENARIOS])
@pytest.mark.parametrize(
    "world,grid", [pytest.param(w, g, id=f"U{g[0]}R{g[1]}-{g[2]}-{g[3]}") for w, gs in GRIDS.items() for g in gs]
)
def test_usp_attention_with_documents_and_window_matches_reference(world, grid, scenario):
    per_rank = [r[(grid, scenario)] for r in _results(world)]
    worst_out, worst_grad = max(r["out"] for r in per_rank), max(r["grad"] for r in per_rank)
    assert worst_out <= TOL and worst_grad <= TOL, f"out {worst_out:.2e}, grads {worst_grad:.2e} (tol {TOL})"


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "world,case", [pytest.param(w, c, id=f"U{c[0]}R{c[1]}-{c[2]}-w{c[4]}") for w, cs in DRAFT_CASES.items() for c in cs]
)
def test_windowed_draft_unroll_matches_one_device(world, case):
    per_rank = [r[("draft", case)] for r in _results(world)]
    assert per_rank[0]["window_changes_loss"] > 1e-4  # the window is really in effect
    for ring_mode in ("ring", "gather"):
        worst_loss = max(r[ring_mode]["loss"] for r in per_rank)
        worst_grad = max(r[ring_mode]["grad"] for r in per_rank)
        assert worst_loss <= TOL and worst_grad <= TOL, f"{ring_mode}: loss {worst_loss:.2e}, grads {worst_grad:.2e}"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("world", [2, 4])
def test_usp_refuses_documents_it_cannot_isolate(world):
    for messages in (r["refusals"] for r in _results(world)):
        assert "one packed row" in messages[0] and "more than the row" in messages[1], messages
