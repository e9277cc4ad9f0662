"""Ulysses all-to-all on 4 gloo ranks: data placement, inverse, gradients, one collective per tensor."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from longdraft.attention.ulysses import heads_to_sequence, sequence_to_heads
from longdraft.attention.usp import USPAttentionBackend
from longdraft.parallel.mesh import USPMesh
from tests import layout_positions as shard_layout
from tests.rank_runs import cached_run_ranks

GRIDS = [(4, 1), (2, 2), (2, 1)]  # (2, 1) on 4 ranks: two DP replicas
B, H, L, D = 2, 8, 11, 3


def _global(seed: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, L, D, generator=gen).to(dtype)


def _check_grid(mesh: USPMesh, dtype: torch.dtype) -> dict:
    U, R = mesh.ulysses_size, mesh.ring_size
    c = mesh.coords
    full = _global(10 + c.dp, dtype)  # different data per DP replica
    weight = _global(20 + c.dp, dtype)
    local = shard_layout.scatter_sequence(full, U, R, "contiguous", dim=2)[c.sp_rank].requires_grad_()

    gathered = heads_to_sequence(local, mesh.ulysses_group, U)
    # Expected: this rank's head slice over the ring chunk (global tail zero-padded).
    heads = slice(c.ulysses * H // U, (c.ulysses + 1) * H // U)
    positions = shard_layout.ring_positions(L, U, R, c.ring, "contiguous")
    padded = torch.cat([full, full.new_zeros(B, H, U * R * gathered.shape[2] // U - L, D)], dim=2)
    placed = torch.equal(gathered, padded[:, heads][:, :, positions])

    back = sequence_to_heads(gathered, mesh.ulysses_group, U)
    inverse = torch.equal(back, local)

    # d/dx sum(heads_to_sequence(x) * W_gathered) is W in x's layout: pure data movement.
    padded_w = torch.cat([weight, weight.new_zeros(B, H, padded.shape[2] - L, D)], dim=2)
    (gathered.float() * padded_w[:, heads][:, :, positions].float()).sum().backward()
    local_w = shard_layout.scatter_sequence(weight, U, R, "contiguous", dim=2)[c.sp_rank]
    grad_ok = local.grad.dtype == dtype and torch.equal(local.grad, local_w)

    # And the other direction's gradient.
    y = gathered.detach().requires_grad_()
    (sequence_to_heads(y, mesh.ulysses_group, U).float() * local_w.float()).sum().backward()
    grad_back_ok = torch.equal(y.grad, padded_w[:, heads][:, :, positions])
    return {"placed": placed, "inverse": inverse, "grad": grad_ok, "grad_back": grad_back_ok}


def _count_collectives(mesh: USPMesh) -> tuple[int, int]:
    """all_to_all_single calls for prepare(q, k, v) + finish(out), forward and backward."""
    calls = []
    original = dist.all_to_all_single

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    dist.all_to_all_single = counting
    try:
        backend = USPAttentionBackend(mesh, num_heads=8, num_kv_heads=2)  # U=4: KV replicated 2x
        q = torch.randn(1, 8, 3, 4, requires_grad=True)
        k = torch.randn(1, 2, 3, 4, requires_grad=True)
        v = torch.randn(1, 2, 3, 4, requires_grad=True)
        pq, pk, pv = backend.prepare(q, k, v)
        out = backend.finish(pq + pk.repeat_interleave(2, 1) + pv.repeat_interleave(2, 1))
        forward = len(calls)
        out.sum().backward()
        backward = len(calls) - forward
    finally:
        dist.all_to_all_single = original
    return forward, backward


def _worker(rank: int, world: int) -> dict:
    report = {}
    meshes = {grid: USPMesh.build(*grid) for grid in GRIDS}
    for grid, mesh in meshes.items():
        for dtype in (torch.float32, torch.bfloat16):
            report[(grid, str(dtype))] = _check_grid(mesh, dtype)
    report["collectives"] = _count_collectives(meshes[(4, 1)])
    return report


def _reports() -> list[dict]:
    return cached_run_ranks(_worker, 4, timeout_s=90)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", ["torch.float32", "torch.bfloat16"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"U{g[0]}R{g[1]}")
def test_all_to_all_places_inverts_and_differentiates(grid, dtype) -> None:
    for rank, report in enumerate(_reports()):
        r = report[(grid, dtype)]
        assert r["placed"], f"rank {rank}: gathered sequence is not the ring chunk of this rank's heads"
        assert r["inverse"], f"rank {rank}: sequence_to_heads did not invert heads_to_sequence"
        assert r["grad"] and r["grad_back"], f"rank {rank}: gradient of the all-to-all is not its inverse"


@pytest.mark.timeout(120)
def test_one_collective_per_tensor() -> None:
    for report in _reports():
        # prepare: q, k, v (KV heads replicated before the exchange, not exchanged twice); finish: out.
        assert report["collectives"] == (4, 4)


@pytest.mark.timeout(10)
def test_size_one_is_identity_and_bad_heads_raise() -> None:
    x = torch.randn(1, 4, 5, 2)
    assert heads_to_sequence(x, None, 1) is x and sequence_to_heads(x, None, 1) is x
    with pytest.raises(ValueError, match="H divisible by the Ulysses size 3"):
        heads_to_sequence(x, None, 3)
