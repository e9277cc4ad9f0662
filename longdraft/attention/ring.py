"""Ring attention over the step-0 (causal) keys, forward and backward, without autograd.

After the Ulysses all-to-all every ring rank holds a block of queries and the keys/values at the
same positions. K/V blocks travel once around the ring (non-blocking sends to the next rank,
started before the current block is computed, so transfer overlaps compute). Each block's result
is merged into the running output with its log-sum-exp in fp32.

Backward runs every block's kernel with the *final* output and log-sum-exp (so each block's
softmax gradient is the global one), keeps dQ local, and sends fp32 dK/dV accumulators around
the ring together with K/V: after ``R`` hops each accumulator arrives back at its owner.

Which query rows meet which key columns (``block_plan``):

- ``contiguous``: own block causal, blocks of earlier ring ranks in full, later ones skipped.
- ``zigzag``: local order ``[chunk q | chunk 2R-1-q]``. Own block causal; an earlier rank's
  block: all queries against its first chunk; a later rank's block: the second query chunk
  against both of its chunks. Every rank then does the same work at every hop.

With documents or a sliding window (``KeyVisibility``, not plain) ``block_plans`` cuts each pair of
blocks per document and window instead, and skips pairs with no allowed (query, key) pair; the
ring then stops after the last hop any rank needs (``ring_hops``: a short window needs one or two),
and the backward sends each finished dK/dV accumulator straight to its owner from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from longdraft.attention.blocks import BlockPlan, backward_block, forward_block
from longdraft.attention.visibility import KeyVisibility, ring_runs
from longdraft.choices import ShardOrder
from longdraft.step_meter import StepMeter, communicating

_ALL = slice(None)
_KV_TAG, _GRAD_TAG = 0, 1


@dataclass(frozen=True)
class RingComm:
    """The ring group as seen from one rank (group-local ranks)."""

    group: ProcessGroup | None
    size: int
    rank: int

    @property
    def next(self) -> int:
        return (self.rank + 1) % self.size

    @property
    def prev(self) -> int:
        return (self.rank - 1) % self.size


def block_plan(order: ShardOrder, my_rank: int, src_rank: int, seq: int) -> BlockPlan | None:
    """What this rank computes with the K/V block of ring rank ``src_rank`` (``None``: nothing)."""
    if src_rank == my_rank:
        return BlockPlan(_ALL, _ALL, True)
    if order == "contiguous":
        return BlockPlan(_ALL, _ALL, False) if src_rank < my_rank else None
    half = seq // 2
    if src_rank < my_rank:
        return BlockPlan(_ALL, slice(0, half), False)
    return BlockPlan(slice(half, None), _ALL, False)


def block_plans(
    order: ShardOrder, my_rank: int, src_rank: int, seq: int, ring_size: int, visibility: KeyVisibility | None
) -> list[BlockPlan]:
    """The kernel calls of this rank with the K/V block of ring rank ``src_rank`` (none: skipped)."""
    if visibility is None or visibility.plain:
        plan = block_plan(order, my_rank, src_rank, seq)
        return [] if plan is None else [plan]
    return visibility.plans(ring_runs(order, my_rank, ring_size, seq), ring_runs(order, src_rank, ring_size, seq))


def ring_hops(order: ShardOrder, ring_size: int, seq: int, visibility: KeyVisibility | None) -> int:
    """How many blocks the ring passes (own block included): one past the last hop at which any
    rank has work. The same on every rank (a function of shared values), so all stop together."""
    if visibility is None or visibility.plain:
        return ring_size
    needed = [
        hop
        for hop in range(ring_size)
        if any(block_plans(order, r, (r - hop) % ring_size, seq, ring_size, visibility) for r in range(ring_size))
    ]
    return max(needed, default=0) + 1


class _Exchange:
    """One hop around the ring: send ``tensor`` to the next rank, receive the previous rank's (or,
    with ``distance``, to the rank that many ahead, from the one that many behind)."""

    def __init__(self, comm: RingComm, tensor: torch.Tensor, tag: int, meter: StepMeter | None, distance: int = 1):
        self.recv = torch.empty_like(tensor)
        self.meter, self.device = meter, tensor.device
        if meter is not None:
            meter.add_bytes("ring", tensor.numel() * tensor.element_size())
        ops = [
            dist.P2POp(dist.isend, tensor, group=comm.group, group_peer=(comm.rank + distance) % comm.size, tag=tag),
            dist.P2POp(dist.irecv, self.recv, group=comm.group, group_peer=(comm.rank - distance) % comm.size, tag=tag),
        ]
        self.works = dist.batch_isend_irecv(ops)

    def wait(self) -> torch.Tensor:
        with communicating(self.meter, "ring_wait", self.device):
            for work in self.works:
                work.wait()
        return self.recv


def ring_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    comm: RingComm,
    order: ShardOrder,
    scale: float,
    meter: StepMeter | None = None,
    visibility: KeyVisibility | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of the local queries over the whole ring's keys; returns fp32 ``(out, lse)``."""
    seq = q.shape[2]
    kv = torch.stack([k, v])
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    hops = ring_hops(order, comm.size, seq, visibility)
    for hop in range(hops):
        exchange = _Exchange(comm, kv, _KV_TAG, meter) if hop + 1 < hops else None
        for plan in block_plans(order, comm.rank, (comm.rank - hop) % comm.size, seq, comm.size, visibility):
            forward_block(q, kv[0], kv[1], plan, out, lse, scale)
        if exchange is not None:
            kv = exchange.wait()
    return out, lse


def ring_attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    comm: RingComm,
    order: ShardOrder,
    scale: float,
    meter: StepMeter | None = None,
    visibility: KeyVisibility | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the ring attention given the final ``out``/``lse``; dq is fp32, dk/dv in k's dtype."""
    seq = q.shape[2]
    dout, out = dout.to(q.dtype).contiguous(), out.to(q.dtype).contiguous()
    kv = torch.stack([k, v])
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    grad_exchange: _Exchange | None = None
    hops = ring_hops(order, comm.size, seq, visibility)
    for hop in range(hops):
        kv_exchange = _Exchange(comm, kv, _KV_TAG, meter) if hop + 1 < hops else None
        dkv = torch.zeros(kv.shape, dtype=torch.float32, device=kv.device)
        for plan in block_plans(order, comm.rank, (comm.rank - hop) % comm.size, seq, comm.size, visibility):
            backward_block(dout, q, kv[0], kv[1], out, lse, plan, scale, dq, dkv[0], dkv[1])
        if grad_exchange is not None:
            # The accumulator of the block just processed, from the rank that had it before.
            dkv += grad_exchange.wait()
        if hops > 1:
            # Every rank that needs this block has added to it by the last hop: from there it goes
            # straight to its owner, hops - 1 ranks back (with all R hops: the next rank).
            last = hop + 1 == hops
            grad_exchange = _Exchange(comm, dkv, _GRAD_TAG, meter, comm.size - (hops - 1) if last else 1)
        if kv_exchange is not None:
            kv = kv_exchange.wait()
    # Each accumulator is now back with the rank that owns its block.
    dkv = grad_exchange.wait() if grad_exchange is not None else dkv
    return dq, dkv[0].to(k.dtype), dkv[1].to(v.dtype)
