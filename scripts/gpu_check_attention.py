"""GPU check of the draft-attention kernel path against the single-device reference.

On one CUDA device:
1. ``block``: the block kernels (``block_attention_forward/backward``; bf16 -> flash kernel,
   fp32 -> memory-efficient kernel, checked against math at first use) on one causal block, against fp32 autograd math.
2. ``ttt_fast``: ``ttt_attention_fast`` against ``ttt_attention_reference`` over TTT steps,
   outputs and all gradients; again with packed documents and a sliding window (band blocks run
   the masked path: math with an additive mask on CUDA).
3. ``ring_emulated``: the USP ring computation with R virtual ring ranks on the one device
   (same ``block_plan`` / ``forward_block`` / ``backward_block`` / diagonal merge as the ring,
   without the transfers), contiguous and zigzag, against the reference.
4. ``timing``: the fast path, forward + backward over 7 TTT steps at 8192 tokens with 32 query
   heads, 8 KV heads, head_dim 128, bf16.

Prints one JSON object. ``--device cpu --small`` runs the same code on tiny shapes (smoke test).
Usage: ``python scripts/gpu_check_attention.py [--seq-len 8192] [--iters 5]``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from longdraft.attention.heads import repeat_kv
from longdraft.attention.kernels import block_attention_backward, block_attention_forward
from longdraft.attention.reference import ttt_attention_reference
from longdraft.attention.ring import backward_block, block_plan, forward_block
from longdraft.attention.ttt_step import diagonal_backward, merge_diagonal, ttt_attention_fast
from longdraft.sharding.layout import ShardLayout

FP32_TOL = 1e-5  # relative to the compared tensor's largest magnitude: gradients reach ~10 at L=1024
BF16_REL_TOL = 2.0**-5  # relative to the largest magnitude of the compared tensor (see tests)


def _dev(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item()
    return {"max_abs": diff, "max_rel": diff / max(scale, 1e-12)}


def _ok(devs: dict, dtype: torch.dtype) -> bool:
    key, tol = ("max_rel", FP32_TOL) if dtype == torch.float32 else ("max_rel", BF16_REL_TOL)
    return all(d[key] <= tol for d in devs.values())


def _rand(gen, shape, device, dtype, grad=True):
    t = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
    return t.requires_grad_(grad)


def check_block(device, dtype, B, H, Hkv, L, D) -> dict:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (_rand(gen, (B, h, L, D), device, dtype) for h in (H, Hkv, Hkv))
    dout = _rand(gen, (B, H, L, D), device, dtype, grad=False)
    scale = 1 / math.sqrt(D)
    # fp32 autograd math on the same (rounded) inputs.
    kf, vf = repeat_kv(k.float(), H // Hkv), repeat_kv(v.float(), H // Hkv)
    scores = torch.einsum("bhtd,bhsd->bhts", q.float(), kf) * scale
    scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=device).tril(), float("-inf"))
    ref_lse = torch.logsumexp(scores, -1)
    ref_out = torch.einsum("bhts,bhsd->bhtd", torch.softmax(scores, -1), vf)
    ref_out.backward(dout.float())
    with torch.no_grad():
        out, lse = block_attention_forward(q, k, v, True, scale)
        dq, dk, dv = block_attention_backward(dout, q, k, v, out, lse, True, scale)
    devs = {
        "out": _dev(out, ref_out),
        "lse": _dev(lse, ref_lse),
        "dq": _dev(dq, q.grad),
        "dk": _dev(dk, k.grad),
        "dv": _dev(dv, v.grad),
    }
    return {"check": "block", "dtype": str(dtype), "ok": _ok(devs, dtype), "dev": devs}


def _ttt_inputs(device, dtype, B, H, Hkv, L, D, K, seed):
    gen = torch.Generator().manual_seed(seed)
    qs = [_rand(gen, (B, H, L, D), device, dtype) for _ in range(K)]
    ks = [_rand(gen, (B, Hkv, L, D), device, dtype) for _ in range(K)]
    vs = [_rand(gen, (B, Hkv, L, D), device, dtype) for _ in range(K)]
    ws = [_rand(gen, (B, H, L, D), device, torch.float32, grad=False) for _ in range(K)]
    return qs, ks, vs, ws


def _reference_run(qs, ks, vs, ws, **visibility):
    outs, loss = [], 0.0
    for k in range(len(qs)):
        out = ttt_attention_reference(qs[k], ks[: k + 1], vs[: k + 1], **visibility)
        outs.append(out.detach())
        loss = loss + (out.float() * ws[k]).sum()
    loss.backward()
    grads = [t.grad.detach().clone() for t in (*qs, *ks, *vs)]
    for t in (*qs, *ks, *vs):
        t.grad = None
    return outs, grads


def check_ttt_fast(device, dtype, B, H, Hkv, L, D, K, **visibility) -> dict:
    """``visibility``: ``doc_lengths`` and ``window`` of both paths (none: plain causal)."""
    qs, ks, vs, ws = _ttt_inputs(device, dtype, B, H, Hkv, L, D, K, seed=1)
    ref_outs, ref_grads = _reference_run(qs, ks, vs, ws, **visibility)
    loss, out_dev = 0.0, []
    for k in range(K):
        out = ttt_attention_fast(qs[k], ks[: k + 1], vs[: k + 1], **visibility)
        out_dev.append(_dev(out, ref_outs[k]))
        loss = loss + (out.float() * ws[k]).sum()
    loss.backward()
    grad_dev = [_dev(t.grad, g) for t, g in zip((*qs, *ks, *vs), ref_grads)]
    devs = {"out": _worst(out_dev), "grad": _worst(grad_dev)}
    name = "ttt_fast_documents_window" if visibility else "ttt_fast"
    return {"check": name, "dtype": str(dtype), "ttt": K, "ok": _ok(devs, dtype), "dev": devs, **visibility}


def _worst(devs: list[dict]) -> dict:
    return {key: max(d[key] for d in devs) for key in devs[0]}


def check_ring_emulated(device, dtype, B, H, Hkv, L, D, K, R, layout) -> dict:
    """U = 1, R virtual ring ranks: each rank's block computation, no transfers."""
    qs, ks, vs, ws = _ttt_inputs(device, dtype, B, H, Hkv, L, D, K, seed=2)
    ref_outs, ref_grads = _reference_run(qs, ks, vs, ws)
    scale = 1 / math.sqrt(D)
    contract = ShardLayout(L, 1, R, 0, layout)
    total = contract.padded_length
    pos = [contract.ring_positions(p).to(device) for p in range(R)]

    def pad(t):
        return torch.cat([t.detach(), t.new_zeros(*t.shape[:2], total - L, t.shape[3])], dim=2)

    grads = [torch.zeros(*t.shape[:2], total, D, device=device) for t in (*qs, *ks, *vs)]
    gq, gk, gv = grads[:K], grads[K : 2 * K], grads[2 * K :]
    out_dev = []
    for step in range(K):
        q = [pad(qs[step])[:, :, p] for p in pos]
        keys = [[pad(ks[j])[:, :, p] for p in pos] for j in range(step + 1)]
        values = [[pad(vs[j])[:, :, p] for p in pos] for j in range(step + 1)]
        dout_all = [pad(ws[step]).to(dtype)[:, :, p] for p in pos]
        for me in range(R):
            out = torch.zeros(q[me].shape, dtype=torch.float32, device=device)
            lse = torch.full(q[me].shape[:3], float("-inf"), device=device)
            for hop in range(R):
                src = (me - hop) % R
                plan = block_plan(layout, me, src, q[me].shape[2])
                if plan is not None:
                    forward_block(q[me], keys[0][src], values[0][src], plan, out, lse, scale)
            diag_k = [keys[j][me] for j in range(1, step + 1)]
            diag_v = [values[j][me] for j in range(1, step + 1)]
            out, lse = merge_diagonal(out, lse, q[me], diag_k, diag_v, scale)
            out = out.to(dtype)
            real = pos[me] < L
            out_dev.append(_dev(out[:, :, real], ref_outs[step][:, :, pos[me][real]]))
            dq = torch.zeros(q[me].shape, device=device)
            for hop in range(R):
                src = (me - hop) % R
                plan = block_plan(layout, me, src, q[me].shape[2])
                if plan is None:
                    continue
                dk = torch.zeros(keys[0][src].shape, device=device)
                dv = torch.zeros(keys[0][src].shape, device=device)
                backward_block(dout_all[me], q[me], keys[0][src], values[0][src], out, lse, plan, scale, dq, dk, dv)
                gk[0][:, :, pos[src]] += dk
                gv[0][:, :, pos[src]] += dv
            dq_diag, dkeys, dvalues = diagonal_backward(dout_all[me], out, lse, q[me], diag_k, diag_v, scale)
            gq[step][:, :, pos[me]] += dq + dq_diag
            for j in range(1, step + 1):
                gk[j][:, :, pos[me]] += dkeys[j - 1].float()
                gv[j][:, :, pos[me]] += dvalues[j - 1].float()
    grad_dev = [_dev(g[:, :, :L].to(dtype), r) for g, r in zip(grads, ref_grads)]
    devs = {"out": _worst(out_dev), "grad": _worst(grad_dev)}
    return {
        "check": "ring_emulated",
        "dtype": str(dtype),
        "ring": R,
        "layout": layout,
        "ttt": K,
        "ok": _ok(devs, dtype),
        "dev": devs,
    }


def time_fast_path(device, L, H, Hkv, D, K, iters) -> dict:
    dtype = torch.bfloat16
    qs, ks, vs, _ = _ttt_inputs(device, dtype, 1, H, Hkv, L, D, K, seed=3)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(iters + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = sum(ttt_attention_fast(qs[k], ks[: k + 1], vs[: k + 1]).float().sum() for k in range(K))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first run warms up
            times.append(time.perf_counter() - start)
        for t in (*qs, *ks, *vs):
            t.grad = None
    step = statistics.median(times)
    return {
        "check": "timing_fast_path",
        "seq_len": L,
        "heads": H,
        "kv_heads": Hkv,
        "head_dim": D,
        "ttt": K,
        "dtype": "bfloat16",
        "step_s": step,
        "tokens_per_s": L / step,
        "peak_mem_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="tiny shapes (smoke test, e.g. on CPU)")
    p.add_argument("--seq-len", type=int, default=8192, help="timing length")
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu --small for a smoke test")
    if args.small:
        acc = dict(B=1, H=4, Hkv=2, L=24, D=16)
        timing = dict(L=128, H=4, Hkv=2, D=16, K=7)
    else:
        acc = dict(B=1, H=32, Hkv=8, L=1024, D=128)  # reference needs T x T scores: keep L modest
        timing = dict(L=args.seq_len, H=32, Hkv=8, D=128, K=7)
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        results.append(check_block(device, dtype, **acc))
        results.append(check_ttt_fast(device, dtype, **acc, K=3))
        L = acc["L"]
        docs = (L // 3, 1, L // 2)  # tail padding after them
        results.append(check_ttt_fast(device, dtype, **acc, K=3, doc_lengths=docs, window=max(2, L // 5)))
        for R, layout in [(2, "contiguous"), (4, "contiguous"), (4, "zigzag")]:
            results.append(check_ring_emulated(device, dtype, **acc, K=3, R=R, layout=layout))
    results.append(time_fast_path(device, **timing, iters=args.iters))
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "all_ok": all(r.get("ok", True) for r in results),
        "tolerances": {"fp32_rel": FP32_TOL, "bf16_rel": BF16_REL_TOL},
        "results": results,
    }
    print(json.dumps(report, indent=1))
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
