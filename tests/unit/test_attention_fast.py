"""The fast single-device TTT attention equals the reference (explicit mask) attention."""

import pytest
import torch

from longdraft.attention.reference import ttt_attention_reference
from longdraft.attention.ttt_step import ttt_attention_fast


def _run(fn, q, keys, values, grad_out):
    leaves = [q, *keys, *values]
    out = fn(q, keys, values)
    grads = torch.autograd.grad((out.float() * grad_out.float()).sum(), leaves)
    return out, grads


def _inputs(batch, heads, kv_heads, seq, dim, n_blocks, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    make = lambda h: torch.randn(batch, h, seq, dim, generator=gen).to(dtype).requires_grad_()  # noqa: E731
    return (
        make(heads),
        [make(kv_heads) for _ in range(n_blocks)],
        [make(kv_heads) for _ in range(n_blocks)],
        make(heads).detach(),
    )


@pytest.mark.parametrize(
    "batch,heads,kv_heads,seq,dim,ttt",
    [(1, 2, 2, 1, 4, 1), (2, 4, 2, 9, 8, 3), (1, 4, 1, 17, 16, 7), (3, 6, 3, 12, 8, 2), (2, 4, 4, 33, 8, 7)],
)
def test_fast_matches_reference_fp32(batch, heads, kv_heads, seq, dim, ttt):
    for step in range(ttt):  # step k attends to k+1 key blocks
        q, keys, values, grad_out = _inputs(batch, heads, kv_heads, seq, dim, step + 1, torch.float32, seed=step)
        ref_out, ref_grads = _run(ttt_attention_reference, q, keys, values, grad_out)
        out, grads = _run(ttt_attention_fast, q, keys, values, grad_out)
        assert (out - ref_out).abs().max() < 1e-6
        for g, r in zip(grads, ref_grads):
            # 1e-6 relative to the gradient's scale: sums over up to T*K terms round differently.
            assert (g - r).abs().max() < 1e-6 * max(1.0, r.abs().max().item())


def test_fast_matches_reference_bf16():
    # bf16 keeps 8 mantissa bits: one rounding of outputs of magnitude ~1 is up to 2^-8 ~ 4e-3,
    # and the kernel rounds q·k and P·V at different points than the reference.
    q, keys, values, grad_out = _inputs(2, 4, 2, 24, 16, 4, torch.bfloat16, seed=3)
    ref_out, ref_grads = _run(ttt_attention_reference, q, keys, values, grad_out)
    out, grads = _run(ttt_attention_fast, q, keys, values, grad_out)
    assert (out.float() - ref_out.float()).abs().max() < 2e-2
    for g, r in zip(grads, ref_grads):
        assert (g.float() - r.float()).abs().max() < 5e-2


def test_padded_tail_does_not_change_real_positions():
    # Right padding sits at the tail; causal masking alone keeps it away from real queries.
    q, keys, values, _ = _inputs(1, 2, 2, 10, 8, 3, torch.float32, seed=5)
    full = ttt_attention_fast(q, keys, values)
    short = ttt_attention_fast(q[:, :, :7], [k[:, :, :7] for k in keys], [v[:, :, :7] for v in values])
    assert (full[:, :, :7] - short).abs().max() < 1e-6


def test_mismatched_blocks_raise():
    q, keys, values, _ = _inputs(1, 2, 2, 4, 4, 2, torch.float32, seed=0)
    with pytest.raises(ValueError, match="same non-zero number"):
        ttt_attention_fast(q, keys, values[:1])
