"""Ring attention over the step-0 causal keys: block plan coverage, exactness on gloo, failure modes."""

from __future__ import annotations

import math
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from longdraft.attention.heads import repeat_kv
from longdraft.attention.ring import RingComm, block_plan, ring_attention_backward, ring_attention_forward
from longdraft.attention.usp import USPAttentionBackend
from longdraft.parallel.mesh import USPMesh
from tests import layout_positions as shard_layout
from tests.rank_runs import cached_run_ranks

# --- the block plan (pure) -------------------------------------------------------------------


def _pairs_computed(layout: str, U: int, R: int, L: int, ring: int) -> list[tuple[int, int]]:
    """(query position, key position) pairs rank ``ring`` scores over a whole ring pass."""
    pos = [shard_layout.ring_positions(L, U, R, p, layout) for p in range(R)]
    seq = pos[ring].numel()
    pairs = []
    for hop in range(R):
        src = (ring - hop) % R
        plan = block_plan(layout, ring, src, seq)
        if plan is None:
            continue
        qs, ks = pos[ring][plan.rows], pos[src][plan.cols]
        for i, qp in enumerate(qs.tolist()):
            for j, kp in enumerate(ks.tolist()):
                if not plan.causal or j <= i:
                    pairs.append((qp, kp))
    return pairs


@pytest.mark.timeout(30)
@pytest.mark.parametrize("layout", shard_layout.SHARD_ORDERS)
@pytest.mark.parametrize("U,R,L", [(1, 1, 5), (1, 2, 9), (2, 2, 13), (1, 3, 11), (1, 4, 16), (2, 4, 19)])
def test_plan_scores_every_causal_pair_exactly_once(layout, U, R, L) -> None:
    for ring in range(R):
        pairs = _pairs_computed(layout, U, R, L, ring)
        assert len(pairs) == len(set(pairs)), "a (query, key) pair is scored twice"
        queries = shard_layout.ring_positions(L, U, R, ring, layout).tolist()
        expected = {(q, k) for q in queries for k in range(q + 1)}
        assert set(pairs) == expected


@pytest.mark.timeout(30)
@pytest.mark.parametrize("R", [2, 4])
def test_zigzag_balances_the_causal_work(R) -> None:
    L = 64 * R
    work = {
        layout: [len(_pairs_computed(layout, 1, R, L, ring)) for ring in range(R)]
        for layout in shard_layout.SHARD_ORDERS
    }
    contiguous, zigzag = work["contiguous"], work["zigzag"]
    assert contiguous[-1] > (2 * R - 1) * contiguous[0] * 0.9  # last rank: about (2R-1)x the first
    assert max(zigzag) == min(zigzag)


# --- exactness on 4 gloo ranks ---------------------------------------------------------------

CASES = [  # (U, R, layout, L, heads, kv_heads)
    (1, 4, "contiguous", 19, 4, 2),
    (1, 4, "zigzag", 21, 4, 1),
    (1, 2, "contiguous", 10, 2, 2),  # 2 DP replicas, two rings side by side
    (1, 2, "zigzag", 12, 4, 2),
    (2, 2, "zigzag", 15, 4, 2),  # ring of Ulysses-gathered chunks
]


def _reference_block(q, k, v, scale):
    """Causal attention with fp32 math, returning (out, lse)."""
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]).float(), repeat_kv(v, q.shape[1] // v.shape[1]).float()
    scores = torch.einsum("bhtd,bhsd->bhts", q.float(), k) * scale
    mask = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    return torch.einsum("bhts,bhsd->bhtd", torch.softmax(scores, -1), v), lse


def _ring_case(mesh: USPMesh, case, seed: int) -> dict:
    U, R, layout, L, H, Hkv = case
    c = mesh.coords
    gen = torch.Generator().manual_seed(seed * 10 + c.dp)
    B, D = 2, 8
    scale = 1 / math.sqrt(D)
    q, k, v = (torch.randn(B, h, L, D, generator=gen, requires_grad=True) for h in (H, Hkv, Hkv))
    weight = torch.randn(B, H, L, D, generator=gen)
    ref_out, ref_lse = _reference_block(q, k, v, scale)
    (ref_out * weight).sum().backward()

    # This ring rank's view: its Ulysses head slice over its ring positions (padding at the tail).
    pos = shard_layout.ring_positions(L, U, R, c.ring, layout)
    total = shard_layout.padded_length(L, U, R, layout)

    def view(t: torch.Tensor) -> torch.Tensor:
        heads = t.shape[1] // U
        padded = torch.cat([t.detach(), t.new_zeros(B, t.shape[1], total - L, t.shape[3])], dim=2)
        return padded[:, c.ulysses * heads : (c.ulysses + 1) * heads, pos].contiguous()

    lq, lk, lv = view(q), view(k), view(v)
    comm = RingComm(mesh.ring_group, R, c.ring)
    out, lse = ring_attention_forward(lq, lk, lv, comm, layout, scale)
    dq, dk, dv = ring_attention_backward(view(weight), lq, lk, lv, out, lse, comm, layout, scale)
    real = pos < L
    err = lambda a, b: (a.float() - b.float())[:, :, real].abs().max().item()  # noqa: E731
    return {
        "out": err(out, view(ref_out)),
        "lse": err(lse.unsqueeze(-1), view(ref_lse.unsqueeze(-1))),
        "dq": err(dq, view(q.grad)),
        "dk": err(dk, view(k.grad)),
        "dv": err(dv, view(v.grad)),
    }


# --- a rank that skips its backward: its peer fails, it does not hang -----------------------


def _desync(rank: int) -> dict:
    """Ring rank 1 of each DP replica skips the attention backward; ring rank 0 must time out."""
    mesh = USPMesh.build(1, 2, timeout=timedelta(seconds=3))
    backend = USPAttentionBackend(mesh, 2, 2)
    q, k, v = backend.prepare(*(torch.randn(1, 2, 4, 4, requires_grad=True) for _ in range(3)))
    out = backend.finish(backend.attend(q, [k], [v]))
    # Wrong on purpose: ring rank 1's loss does not reach the attention output (no zero-loss
    # guard), so only ring rank 0 enters the ring backward and waits for a peer that never comes.
    loss = out.sum() if mesh.coords.ring == 0 else q.sum() * 0.0
    start = time.monotonic()
    try:
        loss.backward()
        error = None
    except RuntimeError as err:
        error = str(err)[:300]
    waited = time.monotonic() - start
    # Ring rank 1 stays alive here (so ring rank 0 meets a silent peer, not a closed socket).
    dist.all_reduce(torch.ones(1))
    return {"ring": mesh.coords.ring, "error": error, "waited_s": waited}


def _ring_worker(rank: int, world: int) -> dict:
    meshes = {}
    report = {}
    for i, case in enumerate(CASES):
        grid = case[:2]
        if grid not in meshes:
            meshes[grid] = USPMesh.build(*grid)
        report[case] = _ring_case(meshes[grid], case, seed=i)
    # Last, because it leaves the ring group of this scenario unusable.
    report["desync"] = _desync(rank)
    return report


def _reports() -> list[dict]:
    return cached_run_ranks(_ring_worker, 4, timeout_s=90)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"U{c[0]}R{c[1]}-{c[2]}-L{c[3]}-H{c[4]}kv{c[5]}")
def test_ring_matches_single_device_causal_attention(case) -> None:
    for rank, report in enumerate(_reports()):
        for key, err in report[case].items():
            assert err <= 1e-5, f"rank {rank}: {key} deviates by {err:.2e} (tol 1e-5)"


@pytest.mark.timeout(120)
def test_a_rank_that_skips_the_backward_makes_its_peer_fail_instead_of_hang() -> None:
    for rank, report in enumerate(_reports()):
        d = report["desync"]
        if d["ring"] == 1:
            assert d["error"] is None
        else:
            assert d["error"] is not None, f"rank {rank} finished a ring backward its peer never joined"
            assert "timed out" in d["error"].lower(), d["error"]
            assert d["waited_s"] < 30, f"rank {rank} waited {d['waited_s']:.0f} s before failing"
