"""Chunked soft cross-entropy equals a direct full-matrix computation, value and gradients."""

import pytest
import torch

import longdraft.model.loss as loss_module
from longdraft.model.loss import soft_cross_entropy_steps, soft_cross_entropy_sum, target_argmax_in_vocab


def _direct(x, w, th, tw):
    logits = x @ w.t()
    probs = torch.softmax(th @ tw.t(), dim=-1)
    return -(probs * torch.log_softmax(logits, dim=-1)).sum()


@pytest.mark.parametrize("rows,chunk", [(0, 4), (1, 4), (13, 4), (13, 13), (13, 100), (40, 7)])
def test_chunked_equals_direct(rows, chunk):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 8, generator=gen, requires_grad=True)
    w = torch.randn(11, 8, generator=gen, requires_grad=True)
    th, tw = torch.randn(rows, 6, generator=gen), torch.randn(11, 6, generator=gen)
    total, correct = soft_cross_entropy_sum(x, w, th, tw, chunk)
    expected = _direct(x, w, th, tw)
    assert abs(total.item() - expected.item()) < 1e-5 * max(1.0, abs(expected.item()))
    gx, gw = torch.autograd.grad(total, [x, w])
    ex, ew = torch.autograd.grad(expected, [x, w]) if rows else (torch.zeros_like(x), torch.zeros_like(w))
    scale = max(1.0, ew.abs().max().item())  # gw sums over rows: compare relative to its size
    assert (gx - ex).abs().max() < 1e-6 if rows else gx.numel() == 0
    assert (gw - ew).abs().max() < 1e-6 * scale
    assert correct.item() == int(((x @ w.t()).argmax(-1) == (th @ tw.t()).argmax(-1)).sum())


def _shifted_steps(gen, n_targets=30, steps=4):
    """Step k scores a random subset of queries t against target row t + k + 1, as the unroll does."""
    th, tw = torch.randn(n_targets, 6, generator=gen), torch.randn(11, 6, generator=gen)
    rows = []
    for k in range(steps):
        t = torch.arange(n_targets - k - 1)
        keep = torch.rand(len(t), generator=gen) < 0.7
        rows.append(t[keep] + k + 1)
    rows[2] = rows[2][:0]  # a step without any scored query
    xs = [torch.randn(len(r), 8, generator=gen, requires_grad=True) for r in rows]
    return xs, rows, th, tw


@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
def test_all_steps_at_once_equal_each_step_alone(chunk):
    gen = torch.Generator().manual_seed(chunk)
    xs, rows, th, tw = _shifted_steps(gen)
    w = torch.randn(11, 8, generator=gen, requires_grad=True)
    sums, agrees = soft_cross_entropy_steps(xs, rows, w, th, tw, chunk)
    weights = torch.tensor([1.0, 0.8, 0.64, 0.512])
    grads = torch.autograd.grad((weights * sums).sum(), [w, *xs])
    expected = [_direct(x, w, th[r], tw) for x, r in zip(xs, rows)]
    expected_grads = torch.autograd.grad(sum(wk * e for wk, e in zip(weights, expected)), [w, *xs], allow_unused=True)
    for k, (x, r) in enumerate(zip(xs, rows)):
        assert abs(sums[k].item() - expected[k].item()) <= 1e-6 * max(1.0, abs(expected[k].item()))
        assert agrees[k].tolist() == ((x @ w.t()).argmax(-1) == (th[r] @ tw.t()).argmax(-1)).tolist()
    for g, e in zip(grads, expected_grads):
        e = torch.zeros_like(g) if e is None else e
        assert g.shape == e.shape and torch.allclose(
            g, e, rtol=0, atol=1e-6 * max(1.0, e.abs().amax().item() if e.numel() else 0)
        )


def test_each_target_distribution_is_computed_once(monkeypatch):
    # Steps share their target rows (row t+k+1 serves step k at query t and step k+1 at query t-1):
    # forward and backward each compute a used row's distribution once, however many steps use it.
    gen = torch.Generator().manual_seed(5)
    xs, rows, th, tw = _shifted_steps(gen)
    w = torch.randn(11, 8, generator=gen, requires_grad=True)
    computed = []
    probs = loss_module._target_probs
    monkeypatch.setattr(
        loss_module, "_target_probs", lambda h, tw32, r, *t: (computed.append(r.clone()), probs(h, tw32, r, *t))[1]
    )
    sums, _ = soft_cross_entropy_steps(xs, rows, w, th, tw, 4)
    sums.sum().backward()
    used = torch.unique(torch.cat(rows))
    assert sum(len(r) for r in rows) > len(used)  # shared rows exist, so computing per step would repeat them
    assert torch.equal(torch.cat(computed), torch.cat([used, used]))


def test_argmax_in_vocab():
    th = torch.eye(5)  # row i's logits over a 5-token vocab peak at token i
    t2d = torch.tensor([True, False, True, False, True])
    assert target_argmax_in_vocab(th, torch.eye(5), t2d, chunk_size=2).tolist() == t2d.tolist()


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="loss_chunk_size"):
        soft_cross_entropy_sum(torch.zeros(1, 2), torch.zeros(3, 2), torch.zeros(1, 2), torch.zeros(3, 2), 0)


def test_under_bf16_autocast_the_loss_is_computed_in_fp32():
    # The logged loss must be the function whose gradient the backward takes (fp32), not a bf16 copy.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 32, generator=gen, requires_grad=True)
    w = torch.randn(300, 32, generator=gen, requires_grad=True)
    th, tw = torch.randn(64, 16, generator=gen), torch.randn(300, 16, generator=gen)
    expected, expected_correct = soft_cross_entropy_sum(x, w, th, tw, 16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        total, correct = soft_cross_entropy_sum(x, w, th, tw, 16)
    assert total.dtype == torch.float32
    assert abs(total.item() - expected.item()) <= 1e-6 * abs(expected.item())
    assert correct.item() == expected_correct.item()
    grads = torch.autograd.grad(total, [x, w])
    assert all(torch.allclose(g, e, rtol=1e-6, atol=1e-6) for g, e in zip(grads, torch.autograd.grad(expected, [x, w])))
