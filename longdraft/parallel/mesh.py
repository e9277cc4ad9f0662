"""The USP rank grid: ``world = DP x R x U`` with ``rank = (dp * R + ring) * U + ulysses``.

Ulysses groups are contiguous ranks (fast links), ring groups are strided by ``U``, and a
sequence-parallel (SP) group is a block of ``S = U * R`` consecutive ranks. Sizes are validated
by a pure function before any process group is created, so a bad configuration fails the same
way on every rank without issuing a single collective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist
from torch.distributed import ProcessGroup


def process_group_backend(device_type: str) -> str:
    """The backend of every process group of a run on ``device_type``: on CUDA, NCCL for CUDA tensors
    and gloo for CPU ones, so a CPU tensor handed to a collective works instead of being refused."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


@dataclass(frozen=True)
class RankCoords:
    """Where one global rank sits in the grid."""

    dp: int
    ring: int
    ulysses: int
    sp_rank: int  # ring * U + ulysses, the rank inside the SP group


def grid_coords(rank: int, ulysses_size: int, ring_size: int) -> RankCoords:
    sp_size = ulysses_size * ring_size
    sp_rank = rank % sp_size
    return RankCoords(dp=rank // sp_size, ring=sp_rank // ulysses_size, ulysses=sp_rank % ulysses_size, sp_rank=sp_rank)


def grid_rank(dp: int, ring: int, ulysses: int, ulysses_size: int, ring_size: int) -> int:
    return (dp * ring_size + ring) * ulysses_size + ulysses


def kv_replication_factor(num_heads: int, num_kv_heads: int, ulysses_size: int) -> int:
    """How many times each KV head is repeated so the KV heads split evenly over ``U`` ranks.

    Replicating to ``lcm(Hkv, U)`` heads keeps the GQA mapping (query head ``h`` uses replicated
    head ``h // (Hq / Hkv')``, a copy of its original KV head); ``Hq`` divides by that lcm whenever
    it divides by both ``Hkv`` and ``U``. Assumes ``validate_usp_sizes`` passed.
    """
    return math.lcm(num_kv_heads, ulysses_size) // num_kv_heads


def validate_usp_sizes(
    world_size: int,
    ulysses_size: int,
    ring_size: int,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
) -> None:
    """Raise ``ValueError`` naming the sizes and the valid choices; issues no collective."""
    if ulysses_size < 1 or ring_size < 1:
        raise ValueError(f"sp_ulysses_size={ulysses_size} and sp_ring_size={ring_size} must both be >= 1")
    sp_size = ulysses_size * ring_size
    if world_size % sp_size != 0:
        divisors = [d for d in range(1, world_size + 1) if world_size % d == 0]
        raise ValueError(
            f"world size {world_size} is not divisible by sp_size = sp_ulysses_size * sp_ring_size = "
            f"{ulysses_size} * {ring_size} = {sp_size}; valid sp_size values for this world: {divisors}"
        )
    if num_heads is None:
        return
    if num_heads % ulysses_size != 0:
        valid = [u for u in range(1, num_heads + 1) if num_heads % u == 0 and world_size % u == 0]
        raise ValueError(
            f"num_attention_heads={num_heads} is not divisible by sp_ulysses_size={ulysses_size}; "
            f"valid sp_ulysses_size values (divide both the heads and world size {world_size}): {valid}"
        )
    if num_kv_heads is None:
        return
    if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
        raise ValueError(f"num_key_value_heads={num_kv_heads} must be >= 1 and divide num_attention_heads={num_heads}")


@dataclass
class USPMesh:
    """This rank's place in the grid and the process groups it belongs to.

    ``ulysses_ranks`` / ``ring_ranks`` / ``sp_ranks`` / ``dp_ranks`` are the global ranks of this
    rank's groups, in group-rank order.
    """

    world_size: int
    rank: int
    ulysses_size: int
    ring_size: int
    coords: RankCoords
    ulysses_group: ProcessGroup | None
    ring_group: ProcessGroup | None
    ulysses_ranks: list[int]
    ring_ranks: list[int]
    sp_ranks: list[int]
    dp_ranks: list[int]

    @property
    def sp_size(self) -> int:
        return self.ulysses_size * self.ring_size

    @classmethod
    def build(
        cls,
        ulysses_size: int,
        ring_size: int,
        num_heads: int | None = None,
        num_kv_heads: int | None = None,
        timeout: timedelta | None = None,
    ) -> USPMesh:
        """Validate the sizes, then create every group (all ranks create all groups, same order).

        The groups take the default group's backends (``process_group_backend``). ``timeout``
        bounds every collective on the new groups (default: the default group's timeout), so a
        rank whose peer never arrives raises instead of hanging.
        """
        if not dist.is_initialized():
            raise RuntimeError("USPMesh.build needs torch.distributed to be initialised (init_process_group)")
        world, rank = dist.get_world_size(), dist.get_rank()
        validate_usp_sizes(world, ulysses_size, ring_size, num_heads, num_kv_heads)
        U, R = ulysses_size, ring_size
        dp_size = world // (U * R)
        coords = grid_coords(rank, U, R)
        mine: dict[str, tuple[list[int], ProcessGroup | None]] = {}

        def make(kind: str, ranks: list[int]) -> None:
            # new_group must be called by every rank for every group, in the same order.
            group = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                mine[kind] = (ranks, group)

        for dp in range(dp_size):
            for ring in range(R):
                make("ulysses", [grid_rank(dp, ring, u, U, R) for u in range(U)])
            for u in range(U):
                make("ring", [grid_rank(dp, ring, u, U, R) for ring in range(R)])
        return cls(
            world_size=world,
            rank=rank,
            ulysses_size=U,
            ring_size=R,
            coords=coords,
            ulysses_group=mine["ulysses"][1],
            ring_group=mine["ring"][1],
            ulysses_ranks=mine["ulysses"][0],
            ring_ranks=mine["ring"][0],
            sp_ranks=list(range(coords.dp * U * R, (coords.dp + 1) * U * R)),
            dp_ranks=[dp * U * R + coords.sp_rank for dp in range(dp_size)],
        )
