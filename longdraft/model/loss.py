"""Soft cross-entropy of the draft against the target, for all TTT steps at once, in chunks of positions.

Step ``k`` of the unroll scores its queries against target rows shifted by ``k``, so the steps share
their targets: the target distribution of a position is computed once per chunk and used by every
step whose queries land there, in the forward and again in the backward (not once per step).
Neither the draft logits nor the target distribution is ever held for all positions at once: each
chunk's logits are computed, used and dropped in the forward, and recomputed in the backward, so
memory is bounded by ``chunk_size x draft_vocab`` whatever the sequence length. Autocast is switched
off, so under bf16 autocast the logged loss is the same function whose gradient the backward takes.

``precision`` (``training.loss_precision``) picks the logits matmuls only: ``fp32`` exact; ``tf32``
float32 matmuls may use TF32, inside the loss's forward and backward only (the global setting comes
back after); ``bf16`` bf16 operands with fp32 results. Log-sum-exp, softmax and every sum stay fp32.
"""

from __future__ import annotations

import contextlib

import torch

from longdraft.step_meter import StepMeter, phase
from longdraft.target.logits import LogitTransform

IDENTITY = LogitTransform()


def _chunks(target_rows: list[torch.Tensor], chunk_size: int):
    """The target rows used by any step, sorted (``used``), and per chunk of them, per step, the slice
    of that step's queries whose target falls in the chunk (``target_rows[k]`` is ascending)."""
    used = torch.unique(torch.cat(target_rows)) if target_rows else torch.zeros(0, dtype=torch.long)
    where = [torch.searchsorted(used, rows) for rows in target_rows]  # index into ``used`` per query
    edges = torch.arange(0, len(used) + chunk_size, chunk_size, device=used.device)
    bounds = [torch.searchsorted(w, edges).tolist() for w in where]
    plan = []
    for c in range(len(edges) - 1):
        start, end = int(edges[c]), int(edges[c + 1])
        if start >= len(used):
            break
        plan.append((start, end, [(b[c], b[c + 1]) for b in bounds]))
    return used, where, plan


LOSS_PRECISIONS = ("fp32", "tf32", "bf16")


def resolve_loss_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA (tensor cores run bf16 at twice TF32's rate, and the frozen head can then
    live in bf16, as the target's checkpoint stores it), fp32 on CPU (exact, and CPUs have no TF32)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in LOSS_PRECISIONS:
        raise ValueError(f"training.loss_precision must be auto or one of {LOSS_PRECISIONS}, got {precision!r}")
    return precision


def frozen_dtype(loss_precision: str) -> torch.dtype:
    """The dtype the frozen target embedding and head live in: bf16 only where the loss reads them as bf16."""
    return torch.bfloat16 if loss_precision == "bf16" else torch.float32


def operand_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


@contextlib.contextmanager
def matmul_precision(precision: str):
    """``tf32``: float32 matmuls may use TF32 until the block ends; the previous setting is restored
    (never left on globally). Other precisions change nothing."""
    if precision != "tf32":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` with ``x`` cast to the weight's (operand) dtype; the result is fp32."""
    return (x.to(weight.dtype) @ weight.t()).float()


def _target_probs(target_hidden, target_weight, rows, transform: LogitTransform = IDENTITY):
    """The target's own distribution: its logits transformed as the target does (soft-cap, scaling)."""
    return torch.softmax(transform.apply(_logits(target_hidden[rows], target_weight)), dim=-1)


class _StepsSoftCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, target_hidden, target_weight, chunk_size, meter, precision, transform, n_steps, *rest):
        with phase(meter, "loss_s", weight.device), matmul_precision(precision):
            return _StepsSoftCrossEntropy._forward(
                ctx, weight, target_hidden, target_weight, chunk_size, meter, precision, transform, n_steps, *rest
            )

    @staticmethod
    def _forward(
        ctx, weight, target_hidden, target_weight, chunk_size, meter, precision, transform, n_steps, *xs_and_rows
    ):
        xs, target_rows = xs_and_rows[:n_steps], xs_and_rows[n_steps:]
        used, where, plan = _chunks(list(target_rows), chunk_size)
        dtype = operand_dtype(precision)
        weight_op, target_weight_op = weight.to(dtype), target_weight.to(dtype)  # cast once, not per chunk
        totals = torch.zeros(n_steps, dtype=torch.float32, device=weight.device)
        agrees = [torch.empty(x.shape[0], dtype=torch.bool, device=x.device) for x in xs]
        with torch.autocast(device_type=weight.device.type, enabled=False):
            for start, end, slices in plan:
                probs = _target_probs(target_hidden, target_weight_op, used[start:end], transform)
                best = probs.argmax(-1)
                for k, (lo, hi) in enumerate(slices):
                    if lo == hi:
                        continue
                    logits = _logits(xs[k][lo:hi], weight_op)
                    p = probs[where[k][lo:hi] - start]
                    totals[k] += (torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)).sum()
                    agrees[k][lo:hi] = logits.argmax(-1) == best[where[k][lo:hi] - start]
        ctx.save_for_backward(weight, target_hidden, target_weight, *xs)
        ctx.plan, ctx.meter, ctx.precision = (used, where, plan), meter, precision  # the backward reuses the plan
        ctx.transform = transform
        ctx.mark_non_differentiable(*agrees)
        return (totals, *agrees)

    @staticmethod
    def backward(ctx, grad_totals, *_grad_agrees):
        with phase(ctx.meter, "loss_s", grad_totals.device), matmul_precision(ctx.precision):
            return _StepsSoftCrossEntropy._backward(ctx, grad_totals)

    @staticmethod
    def _backward(ctx, grad_totals):
        weight, target_hidden, target_weight, *xs = ctx.saved_tensors
        used, where, plan = ctx.plan
        dtype = operand_dtype(ctx.precision)
        weight_op, target_weight_op = weight.to(dtype), target_weight.to(dtype)
        grad_xs = [torch.empty_like(x, dtype=torch.float32) for x in xs]
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        with torch.autocast(device_type=weight.device.type, enabled=False):
            for start, end, slices in plan:
                probs = _target_probs(target_hidden, target_weight_op, used[start:end], ctx.transform)
                for k, (lo, hi) in enumerate(slices):
                    if lo == hi:
                        continue
                    x = xs[k][lo:hi].to(dtype)
                    logits = _logits(x, weight_op)
                    dlogits = (torch.softmax(logits, dim=-1) - probs[where[k][lo:hi] - start]) * grad_totals[k]
                    dlogits = dlogits.to(dtype)  # bf16: operands only, accumulated in fp32 below
                    grad_xs[k][lo:hi] = dlogits @ weight_op
                    grad_w.add_(dlogits.t() @ x)  # into fp32: no fp32 copy of a [Vd, H] product
        grads_x = tuple(g.to(x.dtype) for g, x in zip(grad_xs, xs))
        return (grad_w.to(weight.dtype), None, None, None, None, None, None, None, *grads_x, *(None for _ in xs))


def soft_cross_entropy_steps(
    xs: list[torch.Tensor],
    target_rows: list[torch.Tensor],
    weight: torch.Tensor,
    target_hidden: torch.Tensor,
    target_weight: torch.Tensor,
    chunk_size: int = 1024,
    meter: StepMeter | None = None,
    precision: str = "fp32",
    target_logits: LogitTransform | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per step ``k``: ``Σ_i H(softmax(T(target_hidden[target_rows[k][i]] @ target_weight.T)), softmax(xs[k][i] @ weight.T))``.

    xs[k]: normed draft hidden of step k's scored queries ``[N_k, H]``; target_rows[k]: their target
    rows, ascending, ``[N_k]`` int64 into target_hidden ``[M, Ht]``; weight: draft ``lm_head``
    ``[Vd, H]``; target_weight: the target ``lm_head`` rows of the draft vocab ``[Vd, Ht]`` (frozen).
    Returns ``(sums, agrees)``: ``[K]`` fp32 with gradients for every ``xs[k]`` and ``weight``, and per
    step ``[N_k]`` bool, whether the draft argmax equals the target argmax. ``meter`` (optional) adds
    the forward and backward time as ``loss_s``; ``precision``: fp32, tf32 or bf16 logits matmuls;
    ``target_logits``: ``T``, the target's own logit transform (`TargetSpec.logits`; None: none).
    """
    if chunk_size < 1:
        raise ValueError(f"training.loss_chunk_size must be >= 1, got {chunk_size}")
    if len(xs) != len(target_rows):
        raise ValueError(f"{len(xs)} steps of draft states but {len(target_rows)} of target rows")
    precision = resolve_loss_precision(precision, target_hidden.device)
    target_weight = target_weight.to(device=target_hidden.device)  # loaded on the CPU; fp32 below by design
    sums, *agrees = _StepsSoftCrossEntropy.apply(
        weight,
        target_hidden,
        target_weight,
        chunk_size,
        meter,
        precision,
        target_logits or IDENTITY,
        len(xs),
        *xs,
        *target_rows,
    )
    return sums, agrees


def soft_cross_entropy_sum(
    x: torch.Tensor,
    weight: torch.Tensor,
    target_hidden: torch.Tensor,
    target_weight: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step, row ``i`` of ``x`` against row ``i`` of ``target_hidden``: ``(loss_sum, correct)``."""
    rows = torch.arange(x.shape[0], device=x.device)
    sums, agrees = soft_cross_entropy_steps([x], [rows], weight, target_hidden, target_weight, chunk_size)
    return sums[0], agrees[0].sum()


@torch.no_grad()
def target_argmax_in_vocab(
    target_hidden: torch.Tensor,
    target_lm_head: torch.Tensor,
    t2d: torch.Tensor,
    chunk_size: int = 1024,
    precision: str = "fp32",
) -> torch.Tensor:
    """Per row: is the target's full-vocabulary argmax inside the draft vocab? ``[N]`` bool. Under
    ``bf16``/``tf32`` a near-tie may resolve differently than in fp32: it only decides a mask."""
    precision = resolve_loss_precision(precision, target_hidden.device)
    out = torch.empty(target_hidden.shape[0], dtype=torch.bool, device=target_hidden.device)
    head = target_lm_head.to(device=target_hidden.device, dtype=operand_dtype(precision))
    with torch.autocast(device_type=target_hidden.device.type, enabled=False), matmul_precision(precision):
        for start in range(0, target_hidden.shape[0], chunk_size):
            logits = _logits(target_hidden[start : start + chunk_size], head)
            out[start : start + chunk_size] = t2d[logits.argmax(-1)]
    return out
