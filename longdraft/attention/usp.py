"""USP attention for the EAGLE-3 draft: Ulysses all-to-all inside, ring attention outside.

Per TTT step the draft model calls ``prepare`` on that step's local q/k/v (RoPE applied), keeps
the prepared keys/values of all steps, calls ``attend(q_k, keys[:k+1], values[:k+1])`` and then
``finish``. Step-0 keys go through the ring (causal over the whole sequence); the diagonal keys
of steps >= 1 sit at the query's own position, which after the all-to-all is on the same rank
and head shard, so they are merged locally by log-sum-exp, in the same autograd function.
Documents of a packed row (``with_documents``) and a sliding ``window`` cut the ring's block pairs
(``attention/visibility.py``); the global document lengths are the same on every rank.
"""

from __future__ import annotations

import copy

import torch

from longdraft.attention.heads import repeat_kv
from longdraft.attention.ring import RingComm, ring_attention_backward, ring_attention_forward
from longdraft.attention.ring_gather import GatheredCausal, gather_ring
from longdraft.attention.ttt_step import ttt_step_attention
from longdraft.attention.ulysses import heads_to_sequence, sequence_to_heads
from longdraft.attention.visibility import KeyVisibility
from longdraft.choices import SHARD_ORDERS, ShardOrder
from longdraft.parallel.mesh import USPMesh, kv_replication_factor, validate_usp_sizes
from longdraft.step_meter import StepMeter


class _RingCausal:
    """The step-0 causal keys spread over the ring: blocks rotate, merged by log-sum-exp."""

    def __init__(self, comm: RingComm, order: ShardOrder, meter: StepMeter | None, visibility: KeyVisibility):
        self.comm, self.order, self.meter, self.visibility = comm, order, meter, visibility

    def forward(self, q, k, v, scale):
        return ring_attention_forward(q, k, v, self.comm, self.order, scale, self.meter, self.visibility)

    def backward(self, dout, q, k, v, out, lse, scale):
        return ring_attention_backward(
            dout, q, k, v, out, lse, self.comm, self.order, scale, self.meter, self.visibility
        )


def _zigzag_to_chunks(x: torch.Tensor, ulysses_size: int) -> torch.Tensor:
    """After the all-to-all the sequence is ``[u0: seg0 seg1 | u1: seg0 seg1 | ...]``; reorder to
    ``[chunk q = seg0 of u0..uU-1 | chunk 2R-1-q = seg1 of u0..uU-1]`` (causal order)."""
    b, h, t, d = x.shape
    seg = t // (2 * ulysses_size)
    return x.reshape(b, h, ulysses_size, 2, seg, d).transpose(2, 3).reshape(b, h, t, d)


def _chunks_to_zigzag(x: torch.Tensor, ulysses_size: int) -> torch.Tensor:
    b, h, t, d = x.shape
    seg = t // (2 * ulysses_size)
    return x.reshape(b, h, 2, ulysses_size, seg, d).transpose(2, 3).reshape(b, h, t, d)


class USPAttentionBackend:
    """Draft attention over a sequence split across the SP group of ``mesh``.

    ``order`` is the shard order (``contiguous`` or ``zigzag``, see ``sharding/layout.py``); it
    must match how the local tensors were sharded. ``ring_mode``: ``ring`` rotates the step-0 K/V
    around the ring at every TTT step; ``gather`` gathers them once per layer (``ring_gather.py``). ``meter`` (optional) collects the bytes sent and
    the time spent waiting on communication, and the attention time (ring waits included).
    """

    def __init__(
        self,
        mesh: USPMesh,
        num_heads: int,
        num_kv_heads: int,
        order: ShardOrder = "contiguous",
        scale: float | None = None,
        ring_mode: str = "ring",
        meter: StepMeter | None = None,
        window: int | None = None,
    ):
        validate_usp_sizes(mesh.world_size, mesh.ulysses_size, mesh.ring_size, num_heads, num_kv_heads)
        if order not in SHARD_ORDERS:
            raise ValueError(f"USP shard order {order!r} is not one of {SHARD_ORDERS}")
        self.mesh, self.order, self.scale, self.meter = mesh, order, scale, meter
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.kv_repeat = kv_replication_factor(num_heads, num_kv_heads, mesh.ulysses_size)
        self.ring = RingComm(mesh.ring_group, mesh.ring_size, mesh.coords.ring)
        if ring_mode not in ("ring", "gather"):
            raise ValueError(f"ring mode {ring_mode!r} is not 'ring' or 'gather'")
        self.gather = ring_mode == "gather" and mesh.ring_size > 1
        self._gathered: tuple | None = None  # (step-0 keys, values, their gathered copies) of the current layer
        self.visibility = KeyVisibility(None, window)

    def with_documents(self, doc_lengths: tuple[int, ...] | None) -> USPAttentionBackend:
        """This backend for one micro-batch whose row packs documents of these global lengths."""
        if doc_lengths == self.visibility.doc_lengths:
            return self
        other = copy.copy(self)
        other.visibility = self.visibility.with_documents(doc_lengths)
        other._gathered = None
        return other

    def _check_local(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
            raise ValueError(
                f"expected q/k/v as [B, H, T, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        if q.shape[1] != self.num_heads or k.shape[1] != self.num_kv_heads:
            raise ValueError(
                f"q has {q.shape[1]} heads and k/v {k.shape[1]}, but the backend was built for "
                f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}"
            )
        if (q.shape[0], q.shape[2]) != (k.shape[0], k.shape[2]):
            raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or local length")
        if self.order == "zigzag" and q.shape[2] % 2:
            raise ValueError(f"zigzag shards hold two equal segments; local length {q.shape[2]} is odd")

    def _to_ring(self, x: torch.Tensor) -> torch.Tensor:
        x = heads_to_sequence(x.contiguous(), self.mesh.ulysses_group, self.mesh.ulysses_size, self.meter)
        return _zigzag_to_chunks(x, self.mesh.ulysses_size) if self.order == "zigzag" else x

    def prepare(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Local ``[B, H, T_local, D]`` -> this ring rank's sequence with ``1/U`` of the heads."""
        self._check_local(q, k, v)
        # Replicated KV heads are copies made by autograd, so their gradients sum back.
        k, v = repeat_kv(k, self.kv_repeat), repeat_kv(v, self.kv_repeat)
        return self._to_ring(q), self._to_ring(k), self._to_ring(v)

    def attend(self, q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        if len(keys) != len(values) or not keys:
            raise ValueError(
                f"need the same non-zero number of key and value blocks, got {len(keys)} and {len(values)}"
            )
        expected = (q.shape[0], keys[0].shape[1], q.shape[2], q.shape[3])
        for j, (k, v) in enumerate(zip(keys, values)):
            if tuple(k.shape) != expected or tuple(v.shape) != expected:
                raise ValueError(
                    f"keys[{j}]/values[{j}] have shapes {tuple(k.shape)}/{tuple(v.shape)}, expected {expected} "
                    f"(prepared like q {tuple(q.shape)})"
                )
        self.visibility.check_length(q.shape[2] * self.ring.size)
        if self.visibility.doc_lengths is not None and q.shape[0] != 1:
            raise ValueError(f"a micro-batch with documents holds one packed row, got a batch of {q.shape[0]}")
        if not self.gather:
            causal = _RingCausal(self.ring, self.order, self.meter, self.visibility)
            return ttt_step_attention(q, keys, values, self.scale, causal, self.meter)
        k_all, v_all = self._gather_step0(keys[0], values[0], first_step=len(keys) == 1)
        causal = GatheredCausal(self.ring, self.order, self.visibility)
        return ttt_step_attention(q, [k_all, *keys[1:]], [v_all, *values[1:]], self.scale, causal, self.meter)

    def _gather_step0(self, k0: torch.Tensor, v0: torch.Tensor, first_step: bool):
        """Gathered at step 0 of every unroll, reused by its later steps (which pass the same step-0
        tensors). Every rank decides alike, so the collectives stay in lockstep."""
        cached = self._gathered
        if first_step or cached is None or cached[0] is not k0 or cached[1] is not v0:
            cached = (k0, v0, gather_ring(k0, self.ring, self.meter), gather_ring(v0, self.ring, self.meter))
            self._gathered = cached
        return cached[2], cached[3]

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """Back to the local ``[B, num_heads, T_local, D]`` in the rank's own (shard) order."""
        if self.order == "zigzag":
            out = _chunks_to_zigzag(out, self.mesh.ulysses_size)
        return sequence_to_heads(out.contiguous(), self.mesh.ulysses_group, self.mesh.ulysses_size, self.meter)
