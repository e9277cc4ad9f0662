"""DeepSpeed-Ulysses all-to-all with autograd: scatter heads / gather sequence, and back.

Tensors are ``[B, H, T, D]``. ``heads_to_sequence`` turns this rank's ``[B, H, T, D]`` into
``[B, H/U, U*T, D]``: Ulysses rank ``u`` keeps head slice ``u`` and receives every rank's
sequence, concatenated in Ulysses-rank order. ``sequence_to_heads`` is the inverse. Each is one
``all_to_all_single`` per tensor, and each one's backward is the other.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from longdraft.step_meter import StepMeter, communicating


def _all_to_all(send: torch.Tensor, group: ProcessGroup, meter: StepMeter | None) -> torch.Tensor:
    """Exchange the ``U`` slices of dim 0: slice ``j`` goes to group rank ``j``; result slice ``j`` came from ``j``."""
    recv = torch.empty_like(send)
    sent = send.numel() * send.element_size() * (send.shape[0] - 1) // send.shape[0]  # its own slice stays
    with communicating(meter, "all_to_all", send.device, sent):
        dist.all_to_all_single(recv, send, group=group)
    return recv


def _heads_to_sequence(x: torch.Tensor, group: ProcessGroup, size: int, meter: StepMeter | None) -> torch.Tensor:
    batch, heads, seq, dim = x.shape
    # [U(dest), B, H/U, T, D]: slice j holds the heads rank j keeps.
    send = x.reshape(batch, size, heads // size, seq, dim).transpose(0, 1).contiguous()
    recv = _all_to_all(send, group, meter)  # [U(src), B, H/U, T, D]
    return recv.permute(1, 2, 0, 3, 4).reshape(batch, heads // size, size * seq, dim)


def _sequence_to_heads(x: torch.Tensor, group: ProcessGroup, size: int, meter: StepMeter | None) -> torch.Tensor:
    batch, heads_local, seq_total, dim = x.shape
    seq = seq_total // size
    # [U(dest), B, H/U, T, D]: slice j is the sequence part that belongs to rank j.
    send = x.reshape(batch, heads_local, size, seq, dim).permute(2, 0, 1, 3, 4).contiguous()
    recv = _all_to_all(send, group, meter)  # [U(src), B, H/U, T, D]: head slice j from rank j
    return recv.transpose(0, 1).reshape(batch, size * heads_local, seq, dim)


class _HeadsToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, size, meter):
        ctx.group, ctx.size, ctx.meter = group, size, meter
        return _heads_to_sequence(x, group, size, meter)

    @staticmethod
    def backward(ctx, grad):
        return _sequence_to_heads(grad.contiguous(), ctx.group, ctx.size, ctx.meter), None, None, None


class _SequenceToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, size, meter):
        ctx.group, ctx.size, ctx.meter = group, size, meter
        return _sequence_to_heads(x, group, size, meter)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_sequence(grad.contiguous(), ctx.group, ctx.size, ctx.meter), None, None, None


def heads_to_sequence(
    x: torch.Tensor, group: ProcessGroup | None, size: int, meter: StepMeter | None = None
) -> torch.Tensor:
    """``[B, H, T, D]`` -> ``[B, H/U, U*T, D]`` over the Ulysses group (identity when ``U == 1``)."""
    if x.dim() != 4 or x.shape[1] % size != 0:
        raise ValueError(f"expected [B, H, T, D] with H divisible by the Ulysses size {size}, got {tuple(x.shape)}")
    if size == 1:
        return x
    return _HeadsToSequence.apply(x, group, size, meter)


def sequence_to_heads(
    x: torch.Tensor, group: ProcessGroup | None, size: int, meter: StepMeter | None = None
) -> torch.Tensor:
    """``[B, H/U, U*T, D]`` -> ``[B, H, T, D]`` over the Ulysses group (identity when ``U == 1``)."""
    if x.dim() != 4 or x.shape[2] % size != 0:
        raise ValueError(f"expected [B, H/U, U*T, D] with a sequence divisible by {size}, got {tuple(x.shape)}")
    if size == 1:
        return x
    return _SequenceToHeads.apply(x, group, size, meter)
