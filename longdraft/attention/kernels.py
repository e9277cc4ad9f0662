"""Block attention that also returns the log-sum-exp, with an explicit backward.

Ring attention and the TTT fast path merge several attention blocks by their log-sum-exp and
run each block's backward with the *final* merged output and log-sum-exp, which makes the block
gradients exact. These two functions are that contract:

- ``block_attention_forward(q, k, v, causal, scale, bias=None) -> (out, lse)``
- ``block_attention_backward(dout, q, k, v, out, lse, causal, scale, bias=None) -> (dq, dk, dv)``

``bias`` (optional, ``[Tq, Tk]`` additive: 0 allowed, -inf masked; every row allows a key) is for
the partial blocks of documents and sliding windows (``attention/visibility.py``): the CPU flash
kernel takes it as ``attn_mask``; elsewhere the math path adds it.

Shapes: q/out ``[B, Hq, Tq, D]``, k/v ``[B, Hkv, Tk, D]`` (GQA: Hq a multiple of Hkv), lse
``[B, Hq, Tq]`` in fp32. ``causal`` is top-left aligned and only used with ``Tq == Tk``.

Kernels: on CPU ``aten._scaled_dot_product_flash_attention_for_cpu`` (+ backward); on CUDA in
bf16/fp16 the flash kernel; on CUDA in fp32 the memory-efficient kernel (it returns the
log-sum-exp too), never the T x T math path, which stays as the fallback and the check.

The efficient kernel's log-sum-exp is padded to a multiple of 32 rows (an ATen detail that may
change), so the first fp32 call on each device compares it with the math path on a small block and
falls back to math, with a warning naming the deviation, if they differ.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from longdraft.attention.heads import repeat_kv, sum_kv_groups

_LSE_ALIGN = 32
_efficient_ok: dict[torch.device, bool] = {}  # per device: the efficient kernel passed its check


def _use_cuda_flash(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _efficient_forward(q, k, v, causal, scale):
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, causal, scale=scale
    )
    return out, lse[..., : q.shape[2]].float()


def _efficient_backward(dout, q, k, v, out, lse, causal, scale):
    t = q.shape[2]
    padded = F.pad(lse.float(), (0, -(-t // _LSE_ALIGN) * _LSE_ALIGN - t)).contiguous()
    unused = torch.zeros((), dtype=torch.int64, device=q.device)  # philox seed/offset: no dropout
    dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        dout, q, k, v, None, out, padded, unused, unused, 0.0, [True, True, True, False], causal, scale=scale
    )
    return dq, dk, dv


def _use_cuda_efficient(q: torch.Tensor) -> bool:
    if not (q.is_cuda and q.dtype == torch.float32):
        return False
    if q.device not in _efficient_ok:
        _efficient_ok[q.device] = _efficient_matches_math(q.device, q.shape[-1])
    return _efficient_ok[q.device]


def _efficient_matches_math(device: torch.device, head_dim: int) -> bool:
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, dout = (torch.randn(1, 2, 45, head_dim, device=device, generator=gen) for _ in range(4))
    scale = head_dim**-0.5
    worst = 0.0
    try:
        for causal in (True, False):
            out, lse = _efficient_forward(q, k, v, causal, scale)
            ref_out, ref_lse = _math_forward(q, k, v, causal, scale)
            grads = _efficient_backward(dout, q, k, v, ref_out, ref_lse, causal, scale)
            ref_grads = _math_backward(dout, q, k, v, ref_out, ref_lse, causal, scale)
            for a, b in zip((out, lse, *grads), (ref_out, ref_lse, *ref_grads)):
                worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp(min=1)))
    except RuntimeError as err:
        warnings.warn(
            f"CUDA fp32 attention: the memory-efficient kernel failed ({err}); using the math path", stacklevel=2
        )
        return False
    if worst > 1e-4:
        warnings.warn(
            f"CUDA fp32 attention: the memory-efficient kernel differs from the math path by {worst:.2e} "
            "(relative); using the math path",
            stacklevel=2,
        )
        return False
    return True


def _math_forward(q, k, v, causal, scale, bias=None):
    scores = torch.einsum("bhtd,bhsd->bhts", q.float(), k.float()) * scale
    if bias is not None:
        scores = scores + bias.float()
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    out = torch.einsum("bhts,bhsd->bhtd", probs, v.float())
    return out.to(q.dtype), lse


def _math_backward(dout, q, k, v, out, lse, causal, scale, bias=None):
    qf, kf, vf, dof = q.float(), k.float(), v.float(), dout.float()
    scores = torch.einsum("bhtd,bhsd->bhts", qf, kf) * scale
    if bias is not None:
        scores = scores + bias.float()
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


def _masked_forward(q, k, v, causal, scale, bias):
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=bias.to(q.dtype), scale=scale
        )
        return out, lse.float()
    return _math_forward(q, k, v, causal, scale, bias)


def _masked_backward(dout, q, k, v, out, lse, causal, scale, bias):
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, causal, attn_mask=bias.to(q.dtype), scale=scale
        )
    return _math_backward(dout, q, k, v, out, lse, causal, scale, bias)


def block_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    if bias is not None:
        return _masked_forward(q, k, v, causal, scale, bias)
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse.float()
    if _use_cuda_flash(q):
        result = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
        return result[0], result[1].float()
    if _use_cuda_efficient(q):
        return _efficient_forward(q.contiguous(), k.contiguous(), v.contiguous(), causal, scale)
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
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n_kv = k.shape[1]
    n_rep = q.shape[1] // n_kv
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    dout, out = dout.to(q.dtype).contiguous(), out.to(q.dtype).contiguous()
    if bias is not None:
        dq, dk, dv = _masked_backward(dout, q, k, v, out, lse, causal, scale, bias)
    elif q.device.type == "cpu":
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, causal, scale=scale
        )
    elif _use_cuda_flash(q):
        # Dense (non-varlen) call: no cumulative lengths (None, as the forward returns them), no
        # dropout, so the philox seed/offset are unused placeholders.
        seed = torch.zeros((), dtype=torch.int64, device=q.device)
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dout,
            q,
            k,
            v,
            out,
            lse.contiguous(),
            None,
            None,
            q.shape[2],
            k.shape[2],
            0.0,
            causal,
            seed,
            seed,
            scale=scale,
        )
    elif _use_cuda_efficient(q):
        dq, dk, dv = _efficient_backward(dout, q.contiguous(), k.contiguous(), v.contiguous(), out, lse, causal, scale)
    else:
        dq, dk, dv = _math_backward(dout, q, k, v, out, lse, causal, scale)
    return dq, sum_kv_groups(dk, n_kv), sum_kv_groups(dv, n_kv)
