"""Soft cross-entropy of the draft against the target, in chunks of positions.

Neither the draft logits nor the target distribution is ever held for all positions at once: each
chunk's logits are computed, used and dropped in the forward, and recomputed in the backward, so
memory is bounded by ``chunk_size x draft_vocab`` whatever the sequence length. Everything is fp32,
with autocast switched off, so under bf16 autocast the logged loss is the same function whose
gradient the backward takes.
"""

from __future__ import annotations

import torch


def _chunk_logits(x, weight, target_hidden, target_weight):
    """``weight``/``target_weight`` arrive already in fp32 (converted once per call, not per chunk)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        draft_logits = x.float() @ weight.t()
        target_probs = torch.softmax(target_hidden.float() @ target_weight.t(), dim=-1)
    return draft_logits, target_probs


class _ChunkedSoftCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, target_hidden, target_weight, chunk_size):
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        agree = torch.empty(x.shape[0], dtype=torch.bool, device=x.device)  # draft argmax == target argmax
        weight32, target_weight32 = weight.float(), target_weight.float()
        for start in range(0, x.shape[0], chunk_size):
            end = start + chunk_size
            logits, probs = _chunk_logits(x[start:end], weight32, target_hidden[start:end], target_weight32)
            total += (torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)).sum()
            agree[start:end] = logits.argmax(-1) == probs.argmax(-1)
        ctx.save_for_backward(x, weight, target_hidden, target_weight)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(agree)
        return total, agree

    @staticmethod
    def backward(ctx, grad_total, _grad_agree):
        x, weight, target_hidden, target_weight = ctx.saved_tensors
        grad_x = torch.empty_like(x, dtype=torch.float32)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        weight32, target_weight32 = weight.float(), target_weight.float()
        for start in range(0, x.shape[0], ctx.chunk_size):
            end = start + ctx.chunk_size
            logits, probs = _chunk_logits(x[start:end], weight32, target_hidden[start:end], target_weight32)
            with torch.autocast(device_type=x.device.type, enabled=False):
                dlogits = (torch.softmax(logits, dim=-1) - probs) * grad_total
                grad_x[start:end] = dlogits @ weight32
                grad_w += dlogits.t() @ x[start:end].float()
        return grad_x.to(x.dtype), grad_w.to(weight.dtype), None, None, None


def soft_cross_entropy_sum(
    x: torch.Tensor,
    weight: torch.Tensor,
    target_hidden: torch.Tensor,
    target_weight: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over rows of ``H(softmax(target_hidden @ target_weight.T), softmax(x @ weight.T))``.

    x: normed draft hidden ``[N, H]``; weight: draft ``lm_head`` ``[Vd, H]``; target_hidden ``[N, Ht]``;
    target_weight: the target ``lm_head`` rows of the draft vocab ``[Vd, Ht]`` (frozen).
    Returns ``(loss_sum, correct)``: fp32 scalar with gradients for ``x`` and ``weight``, and the
    number of rows whose draft argmax equals the target argmax.
    """
    total, agree = soft_cross_entropy_rows(x, weight, target_hidden, target_weight, chunk_size)
    return total, agree.sum()


def soft_cross_entropy_rows(
    x: torch.Tensor,
    weight: torch.Tensor,
    target_hidden: torch.Tensor,
    target_weight: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``soft_cross_entropy_sum`` with the agreement of every row: ``(loss_sum, agree [N] bool)``."""
    if chunk_size < 1:
        raise ValueError(f"training.loss_chunk_size must be >= 1, got {chunk_size}")
    return _ChunkedSoftCrossEntropy.apply(x, weight, target_hidden, target_weight, chunk_size)


@torch.no_grad()
def target_argmax_in_vocab(
    target_hidden: torch.Tensor, target_lm_head: torch.Tensor, t2d: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Per row: is the target's full-vocabulary argmax inside the draft vocab? ``[N]`` bool."""
    out = torch.empty(target_hidden.shape[0], dtype=torch.bool, device=target_hidden.device)
    head = target_lm_head.float()
    for start in range(0, target_hidden.shape[0], chunk_size):
        logits = target_hidden[start : start + chunk_size].float() @ head.t()
        out[start : start + chunk_size] = t2d[logits.argmax(-1)]
    return out
