"""Bucketed gradient sums started during the backward equal one flat all-reduce after it (gloo ranks).

Two ranks with different data and two micro-batches each: the bucketed sum (buckets started by the
last backward's hooks) must equal the flat sum; the first bucket (``lm_head``, finished by the loss)
must be started before the backward has finished ``fc`` (its first layer), which is the overlap; a
rank without any micro-batch must still take part, sending zeros in the same bucket order; a bucket
size of 0 is one bucket whose sum equals the flat one.
"""

import pytest
import torch
import torch.distributed as dist

from longdraft.attention.factory import make_attention_backend
from longdraft.model.ttt import step_valid_masks, target_ok, ttt_unroll
from longdraft.parallel.reduction import SumReducer
from tests.draft_factory import batch_of, random_samples, tiny_draft
from tests.rank_runs import cached_run_ranks

K = 3


def _backward_all(model, head, batches, buckets=None):
    backend = make_attention_backend("fast")
    model.zero_grad(set_to_none=True)
    for i, batch in enumerate(batches):
        valid = step_valid_masks(batch, target_ok(batch, head, model.t2d, 4), K)
        result = ttt_unroll(model, batch, valid, torch.full((K,), 10.0), head[model.draft_to_target], backend, 4)
        if buckets is not None and i == len(batches) - 1:
            buckets.arm()
        result.loss.backward()


def _flat_sum(params):
    """The reference: one flat fp32 all-reduce after the backward (zeros for missing gradients)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1).float() for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def _one_bucket(reducer, model, head, batches, params):
    """``grad_bucket_mb = 0``: one bucket through the bucketed code."""
    buckets = reducer.bucketed(params, 0)
    _backward_all(model, head, batches, buckets)
    buckets.finish()
    buckets.close()
    return len(buckets.buckets), [p.grad.clone() for p in params]


def _worker(rank, world):
    torch.manual_seed(0)
    model, head = tiny_draft()
    params = [p for p in model.parameters() if p.requires_grad]
    batches = [batch_of(random_samples([9, 6], seed=10 * rank + m), K) for m in range(2)]
    reducer = SumReducer(dist.group.WORLD)
    _backward_all(model, head, batches)
    _flat_sum(params)
    flat = [p.grad.clone() for p in params]
    one_bucket_count, one_bucket = _one_bucket(reducer, model, head, batches, params)

    # Registered before the buckets' own hooks, so it sees the state just before fc's gradient is final.
    holder, started_before_fc = {}, []
    hook = model.fc.weight.register_post_accumulate_grad_hook(lambda p: started_before_fc.append(holder["b"]._next))
    buckets = holder["b"] = reducer.bucketed(params, 1 / 1024)  # 1 KiB: several buckets
    _backward_all(model, head, batches, buckets)
    in_backward = buckets.started_in_backward
    buckets.finish()
    hook.remove()
    bucketed = [p.grad.clone() for p in params]

    # Rank 1 has no micro-batch this step: its buckets are all started by finish(), with zeros.
    _backward_all(model, head, batches if rank == 0 else [], buckets)
    buckets.finish()
    alone = [p.grad.clone() for p in params]
    _backward_all(model, head, batches if rank == 0 else [])
    _flat_sum(params)
    alone_flat = [p.grad.clone() for p in params]
    buckets.close()
    err = lambda a, b: max(((x - y).abs().max() / y.abs().max().clamp(min=1)).item() for x, y in zip(a, b))  # noqa: E731
    return {
        "err": err(bucketed, flat),
        "err_one_bucket": err(one_bucket, flat),
        "one_bucket_count": one_bucket_count,
        "err_alone": err(alone, alone_flat),
        "buckets": len(buckets.buckets),
        "in_backward": in_backward,
        "started_before_fc": started_before_fc,
        "first_bucket": [tuple(p.shape) for p in buckets.buckets[0].params],
        "lm_head": tuple(model.lm_head.weight.shape),
    }


@pytest.fixture(scope="module")
def results():
    return cached_run_ranks(_worker, 2, timeout_s=120)


@pytest.mark.timeout(180)
def test_bucketed_sum_equals_flat_sum(results):
    for r in results:
        assert r["err"] < 1e-6 and r["err_alone"] < 1e-6, r


@pytest.mark.timeout(180)
def test_zero_bucket_size_is_one_bucket(results):
    for r in results:
        assert r["one_bucket_count"] == 1 and r["err_one_bucket"] < 1e-6, r


@pytest.mark.timeout(180)
def test_buckets_start_during_the_backward(results):
    for r in results:
        assert r["buckets"] > 2, r
        assert r["in_backward"] == r["buckets"], r  # every bucket started by the backward itself
        assert r["first_bucket"] == [r["lm_head"]], r
        assert r["started_before_fc"] and r["started_before_fc"][-1] >= 1, r  # lm_head summed while fc still pending
