"""The step-0 keys/values of the whole ring, gathered once per layer and kept for all TTT steps.

The ring rotates the step-0 K/V around the ring once per TTT step, forward and backward, although
they are the same for every step. Gathering them once (``all_gather``; its backward sums each
block's gradient back to its owner with one ``all_to_all``) exchanges ``1/K`` of the ring's bytes;
every step then attends locally over the gathered blocks with the ring's own block plan, so the
results equal the ring's. Memory: the gathered K/V of one layer, ``R`` times the local K/V (GQA and
Ulysses keep it small: a rank holds only its ``1/U`` share of the KV heads).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from longdraft.attention.blocks import backward_block, forward_block
from longdraft.attention.ring import RingComm, block_plans
from longdraft.attention.visibility import KeyVisibility
from longdraft.choices import ShardOrder
from longdraft.step_meter import StepMeter, communicating


class _AllGatherRing(torch.autograd.Function):
    """``x`` of every ring rank stacked on a new leading axis ``[R, ...]``; backward: the sum over
    ranks of each block's gradient, returned to the block's owner."""

    @staticmethod
    def forward(ctx, x, ring: RingComm, meter: StepMeter | None):
        ctx.ring, ctx.meter = ring, meter
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(ring.size)]
        sent = x.numel() * x.element_size() * (ring.size - 1)  # to every other ring rank
        with communicating(meter, "ring_gather", x.device, sent):
            dist.all_gather(parts, x, group=ring.group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        ring = ctx.ring
        received = torch.empty_like(grad)
        sent = grad.numel() * grad.element_size() * (ring.size - 1) // ring.size
        with communicating(ctx.meter, "ring_gather", grad.device, sent):
            dist.all_to_all_single(received, grad.contiguous(), group=ring.group)  # block j goes to rank j
        return received.sum(0), None, None


def gather_ring(x: torch.Tensor, ring: RingComm, meter: StepMeter | None = None) -> torch.Tensor:
    return _AllGatherRing.apply(x, ring, meter)


class GatheredCausal:
    """The causal part of a TTT step over gathered step-0 K/V ``[R, B, H, T, D]`` (no communication)."""

    def __init__(self, comm: RingComm, order: ShardOrder, visibility: KeyVisibility | None = None):
        self.comm, self.order, self.visibility = comm, order, visibility

    def _plans(self, seq: int):
        for src in range(self.comm.size):
            for plan in block_plans(self.order, self.comm.rank, src, seq, self.comm.size, self.visibility):
                yield src, plan

    def forward(self, q, k_all, v_all, scale):
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        for src, plan in self._plans(q.shape[2]):
            forward_block(q, k_all[src], v_all[src], plan, out, lse, scale)
        return out, lse

    def backward(self, dout, q, k_all, v_all, out, lse, scale):
        dout, out = dout.to(q.dtype).contiguous(), out.to(q.dtype).contiguous()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k_all.shape, dtype=torch.float32, device=q.device)
        dv = torch.zeros(v_all.shape, dtype=torch.float32, device=q.device)
        for src, plan in self._plans(q.shape[2]):
            backward_block(dout, q, k_all[src], v_all[src], out, lse, plan, scale, dq, dk[src], dv[src])
        return dq, dk.to(k_all.dtype), dv.to(v_all.dtype)
