"""The rank grid (sizes, coordinates, real gloo groups) and the shard layout functions."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from longdraft.attention.ring import RingComm
from longdraft.attention.usp import USPAttentionBackend
from longdraft.parallel.mesh import (
    USPMesh,
    grid_coords,
    grid_rank,
    kv_replication_factor,
    validate_usp_sizes,
)
from tests import layout_positions as shard_layout
from tests.rank_runs import cached_run_ranks

# --- sizes and coordinates (pure) ------------------------------------------------------------


@pytest.mark.timeout(10)
def test_grid_matches_the_documented_example() -> None:
    # world 8, U=2, R=2: SP groups {0..3}, {4..7}; Ulysses {0,1},{2,3}; ring {0,2},{1,3}.
    assert [grid_rank(0, ring, u, 2, 2) for ring in range(2) for u in range(2)] == [0, 1, 2, 3]
    assert [grid_rank(1, ring, 1, 2, 2) for ring in range(2)] == [5, 7]
    c = grid_coords(6, 2, 2)
    assert (c.dp, c.ring, c.ulysses, c.sp_rank) == (1, 1, 0, 2)
    for rank in range(24):
        c = grid_coords(rank, 3, 2)
        assert grid_rank(c.dp, c.ring, c.ulysses, 3, 2) == rank
        assert c.sp_rank == c.ring * 3 + c.ulysses


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "world,U,R,heads,kv,expected",
    [
        (6, 4, 1, None, None, ["world size 6", "4 * 1 = 4", "[1, 2, 3, 6]"]),
        (8, 3, 1, 6, 2, ["world size 8", "[1, 2, 4, 8]"]),
        (8, 4, 1, 6, 2, ["num_attention_heads=6", "sp_ulysses_size=4", "[1, 2]"]),
        (4, 2, 2, 8, 3, ["num_key_value_heads=3", "num_attention_heads=8"]),
        (4, 0, 2, 8, 2, ["sp_ulysses_size=0"]),
    ],
)
def test_bad_sizes_name_the_sizes_and_valid_choices(world, U, R, heads, kv, expected) -> None:
    with pytest.raises(ValueError) as err:
        validate_usp_sizes(world, U, R, heads, kv)
    for text in expected:
        assert text in str(err.value), str(err.value)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "heads,kv,U,factor",
    [(8, 8, 4, 1), (8, 2, 2, 1), (8, 2, 4, 2), (8, 1, 4, 4), (12, 3, 4, 4), (8, 4, 8, 2), (32, 8, 16, 2)],
)
def test_kv_heads_are_replicated_to_split_over_ulysses(heads, kv, U, factor) -> None:
    validate_usp_sizes(U, U, 1, heads, kv)
    assert kv_replication_factor(heads, kv, U) == factor
    replicated = kv * factor
    assert replicated % U == 0 and heads % replicated == 0
    # Query head h still reads a copy of its own KV head.
    for h in range(heads):
        assert (h // (heads // replicated)) // factor == h // (heads // kv)


# --- shard layout (pure) -------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("layout", shard_layout.SHARD_ORDERS)
@pytest.mark.parametrize("U,R", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4), (2, 3)])
@pytest.mark.parametrize("L", [1, 5, 13, 24, 25])
def test_layout_positions_partition_the_padded_sequence(layout, U, R, L) -> None:
    S = U * R
    local = shard_layout.local_length(L, U, R, layout)
    all_pos = [shard_layout.query_positions(L, U, R, r, layout) for r in range(S)]
    assert all(p.numel() == local for p in all_pos)
    flat = torch.cat(all_pos)
    assert torch.equal(flat.sort().values, torch.arange(S * local))
    # Padding only at the global tail: the real positions are exactly 0..L-1.
    assert S * local >= L and (S * local - L) < (S if layout == "contiguous" else 2 * S)
    # After the all-to-all, ring rank q holds the positions of its U ranks (in Ulysses order,
    # zigzag: reordered to [chunk q | chunk 2R-1-q]).
    for ring in range(R):
        gathered = torch.cat([all_pos[ring * U + u] for u in range(U)])
        expected = shard_layout.ring_positions(L, U, R, ring, layout)
        assert sorted(gathered.tolist()) == sorted(expected.tolist())
        assert torch.all(expected[1:] > expected[:-1]), "ring order must be causal (increasing)"


@pytest.mark.timeout(10)
def test_layout_matches_the_shard_contract() -> None:
    # L=10000, S=4 (U=2, R=2): C=2500, rank r holds [2500r, 2500r+2500), ring rank 1 holds 5000..9999.
    for r in range(4):
        pos = shard_layout.query_positions(10000, 2, 2, r, "contiguous")
        assert torch.equal(pos, torch.arange(2500 * r, 2500 * (r + 1)))
    assert torch.equal(shard_layout.ring_positions(10000, 2, 2, 1, "contiguous"), torch.arange(5000, 10000))
    # Zigzag, L=16, U=2, R=2: c=2, chunks of 4; ring 0 holds chunks 0 and 3, ring 1 chunks 1 and 2.
    zz = [shard_layout.query_positions(16, 2, 2, r, "zigzag").tolist() for r in range(4)]
    assert zz == [[0, 1, 12, 13], [2, 3, 14, 15], [4, 5, 8, 9], [6, 7, 10, 11]]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("layout", shard_layout.SHARD_ORDERS)
def test_scatter_gather_round_trip_pads_only_the_tail(layout) -> None:
    full = torch.arange(2 * 13 * 3, dtype=torch.float32).view(2, 13, 3) + 1
    shards = shard_layout.scatter_sequence(full, 2, 2, layout)
    assert len(shards) == 4
    for r, shard in enumerate(shards):
        pos = shard_layout.query_positions(13, 2, 2, r, layout)
        assert torch.equal(shard[:, pos < 13], full[:, pos[pos < 13]])
        assert torch.all(shard[:, pos >= 13] == 0)
    assert torch.equal(shard_layout.gather_sequence(shards, 13, 2, 2, layout), full)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("layout", shard_layout.SHARD_ORDERS)
def test_query_positions_do_not_depend_on_the_lookahead(layout) -> None:
    # Writers shard with K look-ahead rows, the attention code reasons without them: the query
    # positions must be the same either way.
    import longdraft.sharding.layout as shard

    for U, R in [(1, 1), (2, 1), (1, 3), (2, 2), (4, 1), (3, 2)]:
        for L in (1, 7, 24, 31):
            contract = shard.ShardLayout(L, U, R, 3, layout)
            for r in range(U * R):
                assert torch.equal(contract.query_positions(r), shard_layout.query_positions(L, U, R, r, layout))
            for q in range(R):
                assert torch.equal(contract.ring_positions(q), shard_layout.ring_positions(L, U, R, q, layout))


@pytest.mark.timeout(10)
def test_layout_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="not one of"):
        shard_layout.local_length(10, 2, 1, "striped")
    with pytest.raises(ValueError, match="SP rank 4 is outside"):
        shard_layout.query_positions(10, 2, 2, 4, "contiguous")


# --- real groups on 4 gloo ranks -------------------------------------------------------------

GRIDS = [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4)]
_COLLECTIVES = (
    "new_group",
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "broadcast",
    "barrier",
    "all_to_all_single",
    "batch_isend_irecv",
    "isend",
    "irecv",
    "send",
    "recv",
)


def _members(group, world: int) -> list[int]:
    mine = torch.tensor([dist.get_rank()])
    out = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return [int(t) for t in out]


def _bad_sizes_issue_no_collective(mesh_ok: USPMesh) -> tuple[list[str], list[str]]:
    calls: list[str] = []
    saved = {name: getattr(dist, name) for name in _COLLECTIVES}

    def recorder(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise RuntimeError(f"collective {name} issued during size validation")

        return record

    messages = []
    try:
        for name in _COLLECTIVES:
            setattr(dist, name, recorder(name))
        for args in [(3, 1), (2, 1, 5, 1), (2, 2, 8, 3), (3, 1, 6, 3)]:
            try:
                USPMesh.build(*args)
            except ValueError as err:
                messages.append(str(err))
        try:
            USPAttentionBackend(mesh_ok, 6, 2)  # mesh_ok has U=4: 6 heads do not split
        except ValueError as err:
            messages.append(str(err))
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)
    return calls, messages


def _grid_worker(rank: int, world: int) -> dict:
    report = {}
    meshes = {}
    for U, R in GRIDS:
        mesh = USPMesh.build(U, R, num_heads=8, num_kv_heads=2)
        meshes[(U, R)] = mesh
        ring = RingComm(mesh.ring_group, mesh.ring_size, mesh.coords.ring)
        report[(U, R)] = {
            "coords": (mesh.coords.dp, mesh.coords.ring, mesh.coords.ulysses, mesh.coords.sp_rank),
            "ulysses": (mesh.ulysses_ranks, _members(mesh.ulysses_group, world)),
            "ring": (mesh.ring_ranks, _members(mesh.ring_group, world)),
            "sp": (mesh.sp_ranks, None),  # rank lists only: no process group is built for them
            "dp": (mesh.dp_ranks, None),
            # the ring neighbours as the attention's ring exchange finds them (group ranks -> global)
            "next_prev": (
                dist.get_global_rank(mesh.ring_group, ring.next),
                dist.get_global_rank(mesh.ring_group, ring.prev),
            ),
            "dp_size": len(mesh.dp_ranks),
        }
    calls, messages = _bad_sizes_issue_no_collective(meshes[(4, 1)])
    # The ranks are still in lockstep afterwards.
    total = torch.ones(1)
    dist.all_reduce(total)
    report["bad"] = (calls, messages, float(total))
    return report


def _reports() -> list[dict]:
    return cached_run_ranks(_grid_worker, 4, timeout_s=90)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("U,R", GRIDS)
def test_groups_have_the_documented_members(U, R) -> None:
    for rank, report in enumerate(_reports()):
        r = report[(U, R)]
        c = grid_coords(rank, U, R)
        assert r["coords"] == (c.dp, c.ring, c.ulysses, c.sp_rank)
        assert r["dp_size"] == 4 // (U * R)
        expected = {
            "ulysses": [grid_rank(c.dp, c.ring, u, U, R) for u in range(U)],
            "ring": [grid_rank(c.dp, q, c.ulysses, U, R) for q in range(R)],
            "sp": list(range(c.dp * U * R, (c.dp + 1) * U * R)),
            "dp": [d * U * R + c.sp_rank for d in range(4 // (U * R))],
        }
        for kind, ranks in expected.items():
            declared, gathered = r[kind]
            assert declared == ranks, f"rank {rank} {kind} group {declared}, expected {ranks}"
            assert gathered in (None, ranks), f"rank {rank} {kind} process group holds {gathered}, expected {ranks}"
        ring = expected["ring"]
        assert r["next_prev"] == (ring[(c.ring + 1) % R], ring[(c.ring - 1) % R])


@pytest.mark.timeout(120)
def test_bad_sizes_fail_on_every_rank_before_any_collective() -> None:
    for report in _reports():
        calls, messages, total = report["bad"]
        assert calls == [], f"collectives issued while validating bad sizes: {calls}"
        assert len(messages) == 5, messages
        assert "world size 4 is not divisible" in messages[0]
        assert "num_attention_heads=5 is not divisible by sp_ulysses_size=2" in messages[1]
        assert "num_key_value_heads=3" in messages[2]
        assert "num_attention_heads=6 is not divisible by sp_ulysses_size=4" in messages[4]
        assert total == 4.0
