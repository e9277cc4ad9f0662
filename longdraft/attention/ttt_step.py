"""Fast single-device TTT attention: one causal flash block plus the diagonal keys of later steps.

The diagonal terms (query ``t`` against the key of step ``j`` at the same ``t``) are a per-position
dot product, so they are merged into the causal block's result analytically by log-sum-exp rather
than by materialising a ``T x T`` mask per step. ``merge_diagonal`` / ``diagonal_backward`` are the
math of that merge; USP attention reuses them after its ring pass.
"""

from __future__ import annotations

import math

import torch

from longdraft.attention.blocks import backward_block, forward_block
from longdraft.attention.heads import repeat_kv, sum_kv_groups
from longdraft.attention.kernels import block_attention_backward, block_attention_forward
from longdraft.attention.visibility import KeyVisibility
from longdraft.step_meter import StepMeter, phase


def _diag_scores(q: torch.Tensor, keys: list[torch.Tensor], scale: float) -> list[torch.Tensor]:
    n_rep = q.shape[1] // keys[0].shape[1] if keys else 1
    qf = q.float()
    return [(qf * repeat_kv(k, n_rep).float()).sum(-1) * scale for k in keys]


def merge_diagonal(
    out0: torch.Tensor,
    lse0: torch.Tensor,
    q: torch.Tensor,
    diag_keys: list[torch.Tensor],
    diag_values: list[torch.Tensor],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the diagonal terms into a causal result ``(out0, lse0)``; returns fp32 ``(out, lse)``."""
    if not diag_keys:
        return out0.float(), lse0
    n_rep = q.shape[1] // diag_keys[0].shape[1]
    scores = _diag_scores(q, diag_keys, scale)
    lse = torch.logsumexp(torch.stack([lse0, *scores], dim=0), dim=0)
    out = torch.exp(lse0 - lse).unsqueeze(-1) * out0.float()
    for s, v in zip(scores, diag_values):
        out = out + torch.exp(s - lse).unsqueeze(-1) * repeat_kv(v, n_rep).float()
    return out, lse


def diagonal_backward(
    dout: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    q: torch.Tensor,
    diag_keys: list[torch.Tensor],
    diag_values: list[torch.Tensor],
    scale: float,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Gradients of the diagonal terms given the final output and log-sum-exp.

    Returns ``(dq_part, dkeys, dvalues)``; ``dq_part`` is fp32 and must be added to the causal
    block's ``dq``.
    """
    dq = torch.zeros_like(q, dtype=torch.float32)
    if not diag_keys:
        return dq, [], []
    n_kv = diag_keys[0].shape[1]
    n_rep = q.shape[1] // n_kv
    dof = dout.float()
    qf = q.float()
    delta = (dof * out.float()).sum(-1)
    dkeys, dvalues = [], []
    for s, k, v in zip(_diag_scores(q, diag_keys, scale), diag_keys, diag_values):
        kf, vf = repeat_kv(k, n_rep).float(), repeat_kv(v, n_rep).float()
        prob = torch.exp(s - lse)
        dscore = prob * ((dof * vf).sum(-1) - delta) * scale
        dq = dq + dscore.unsqueeze(-1) * kf
        dkeys.append(sum_kv_groups(dscore.unsqueeze(-1) * qf, n_kv).to(k.dtype))
        dvalues.append(sum_kv_groups(prob.unsqueeze(-1) * dof, n_kv).to(v.dtype))
    return dq, dkeys, dvalues


class LocalCausal:
    """The step-0 causal keys all on this device: one causal block, or, with documents or a window
    (``visibility``), the blocks of ``KeyVisibility.plans`` merged by log-sum-exp."""

    def __init__(self, visibility: KeyVisibility | None = None):
        self.visibility = visibility if visibility is not None and not visibility.plain else None

    def _plans(self, seq: int):
        self.visibility.check_length(seq)
        return self.visibility.plans([(0, 0, seq)], [(0, 0, seq)])

    def forward(self, q, k, v, scale):
        if self.visibility is None:
            return block_attention_forward(q, k, v, True, scale)
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        for plan in self._plans(q.shape[2]):
            forward_block(q, k, v, plan, out, lse, scale)
        return out, lse

    def backward(self, dout, q, k, v, out, lse, scale):
        if self.visibility is None:
            return block_attention_backward(dout, q, k, v, out, lse, True, scale)
        dout, out = dout.to(q.dtype).contiguous(), out.to(q.dtype).contiguous()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
        for plan in self._plans(q.shape[2]):
            backward_block(dout, q, k, v, out, lse, plan, scale, dq, dk, dv)
        return dq, dk.to(k.dtype), dv.to(v.dtype)


class _TTTStepAttention(torch.autograd.Function):
    """One TTT step: ``causal`` attention over keys[0] plus the diagonal keys[1:], merged by LSE.

    ``causal`` has ``forward(q, k, v, scale) -> (out, lse)`` and
    ``backward(dout, q, k, v, out, lse, scale) -> (dq, dk, dv)`` taking the final merged out/LSE
    (one local block here; the ring in USP attention).
    """

    @staticmethod
    def forward(ctx, q, scale, n_diag, causal, meter, *kv):
        with phase(meter, "attention_s", q.device):
            keys, values = list(kv[: n_diag + 1]), list(kv[n_diag + 1 :])
            out0, lse0 = causal.forward(q, keys[0], values[0], scale)
            out, lse = merge_diagonal(out0, lse0, q, keys[1:], values[1:], scale)
            out = out.to(q.dtype)
        ctx.save_for_backward(q, out, lse, *kv)
        ctx.scale, ctx.n_diag, ctx.causal, ctx.meter = scale, n_diag, causal, meter
        return out

    @staticmethod
    def backward(ctx, dout):
        q, out, lse, *kv = ctx.saved_tensors
        n_diag, scale = ctx.n_diag, ctx.scale
        keys, values = kv[: n_diag + 1], kv[n_diag + 1 :]
        with phase(ctx.meter, "attention_s", q.device):
            dq, dk0, dv0 = ctx.causal.backward(dout, q, keys[0], values[0], out, lse, scale)
            dq_diag, dkeys, dvalues = diagonal_backward(dout, out, lse, q, list(keys[1:]), list(values[1:]), scale)
            dq = (dq.float() + dq_diag).to(q.dtype)
        return (dq, None, None, None, None, dk0, *dkeys, dv0, *dvalues)


def ttt_step_attention(q, keys, values, scale, causal, meter: StepMeter | None = None) -> torch.Tensor:
    """Attention of one TTT step with a pluggable causal part (see ``_TTTStepAttention``); ``meter``
    (optional) adds its forward and backward time as ``attention_s``."""
    if len(keys) != len(values) or not keys:
        raise ValueError(f"need the same non-zero number of key and value blocks, got {len(keys)} and {len(values)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    contiguous = [t.contiguous() for t in (*keys, *values)]
    return _TTTStepAttention.apply(q.contiguous(), scale, len(keys) - 1, causal, meter, *contiguous)


def ttt_attention_fast(
    q: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    scale: float | None = None,
    meter: StepMeter | None = None,
    doc_lengths: tuple[int, ...] | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Same contract and result as ``ttt_attention_reference``, without a ``T x T`` mask."""
    return ttt_step_attention(q, keys, values, scale, LocalCausal(KeyVisibility(doc_lengths, window)), meter)
