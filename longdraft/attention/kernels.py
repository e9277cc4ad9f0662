"""Block attention that also returns the log-sum-exp, with an explicit backward.

Ring attention and the TTT fast path merge several attention blocks by their log-sum-exp and
run each block's backward with the *final* merged output and log-sum-exp, which makes the block
gradients exact. These two functions are that contract:

- ``block_attention_forward(q, k, v, causal, scale) -> (out, lse)``
- ``block_attention_backward(dout, q, k, v, out, lse, causal, scale) -> (dq, dk, dv)``

Shapes: q/out ``[B, Hq, Tq, D]``, k/v ``[B, Hkv, Tk, D]`` (GQA: Hq a multiple of Hkv), lse
``[B, Hq, Tq]`` in fp32. ``causal`` is top-left aligned and only used with ``Tq == Tk``.

Kernels: on CPU ``aten._scaled_dot_product_flash_attention_for_cpu`` (+ backward); on CUDA in
bf16/fp16 the flash kernel; elsewhere (CUDA fp32) an exact math path with fp32 scores.
"""

from __future__ import annotations

import torch

from longdraft.attention.heads import repeat_kv, sum_kv_groups


def _use_cuda_flash(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _math_forward(q, k, v, causal, scale):
    scores = torch.einsum("bhtd,bhsd->bhts", q.float(), k.float()) * scale
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    out = torch.einsum("bhts,bhsd->bhtd", probs, v.float())
    return out.to(q.dtype), lse


def _math_backward(dout, q, k, v, out, lse, causal, scale):
    qf, kf, vf, dof = q.float(), k.float(), v.float(), dout.float()
    scores = torch.einsum("bhtd,bhsd->bhts", qf, kf) * scale
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.exp(scores - lse.unsqueeze(-1))
    dv = torch.einsum("bhts,bhtd->bhsd", probs, dof)
    dprobs = torch.einsum("bhtd,bhsd->bhts", dof, vf)
    delta = (dof * out.float()).sum(-1, keepdim=True)
    dscores = probs * (dprobs - delta) * scale
    dq = torch.einsum("bhts,bhsd->bhtd", dscores, kf)
    dk = torch.einsum("bhts,bhtd->bhsd", dscores, qf)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def block_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, scale=scale
        )
        return out, lse.float()
    if _use_cuda_flash(q):
        result = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
        return result[0], result[1].float()
    return _math_forward(q, k, v, causal, scale)


def block_attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n_kv = k.shape[1]
    n_rep = q.shape[1] // n_kv
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    dout, out = dout.to(q.dtype).contiguous(), out.to(q.dtype).contiguous()
    if q.device.type == "cpu":
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, causal, scale=scale
        )
    elif _use_cuda_flash(q):
        # Dense (non-varlen) call: no cumulative lengths (None, as the forward returns them), no
        # dropout, so the philox seed/offset are unused placeholders.
        seed = torch.zeros((), dtype=torch.int64, device=q.device)
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dout, q, k, v, out, lse.contiguous(), None, None, q.shape[2], k.shape[2], 0.0, causal, seed, seed,
            scale=scale,
        )
    else:
        dq, dk, dv = _math_backward(dout, q, k, v, out, lse, causal, scale)
    return dq, sum_kv_groups(dk, n_kv), sum_kv_groups(dv, n_kv)
