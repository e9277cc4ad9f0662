"""The whole draft unroll with USP attention on gloo ranks equals single-device training.

Each rank holds only its shard (built by the shard contract, as a trainer rank would); losses and
every parameter gradient, summed over ranks, must match the single-device reference run of the
full sequence within 1e-5, with and without activation checkpointing of the TTT steps, and with the
gradients summed in buckets during the backward.
"""

import pytest
import torch
import torch.distributed as dist

from longdraft.attention.factory import make_attention_backend
from longdraft.attention.usp import USPAttentionBackend
from longdraft.model.ttt import step_valid_masks, target_ok, ttt_unroll
from longdraft.parallel.launch import run_ranks
from longdraft.parallel.mesh import USPMesh
from longdraft.parallel.reduction import SumReducer
from longdraft.sharding.batch import ShardBatch
from longdraft.sharding.layout import ShardLayout
from longdraft.sharding.split import split_tensor
from tests.draft_factory import batch_of, random_samples, tiny_draft

K = 3
CASES = {  # world -> (U, R, layout, L)
    2: [(2, 1, "contiguous", 13), (1, 2, "zigzag", 14)],
    4: [(2, 2, "contiguous", 19), (2, 2, "zigzag", 17)],
}


def _unroll(model, head, batch, backend, reducer, checkpointing, bucketed=False):
    valid = step_valid_masks(batch, target_ok(batch, head, model.t2d, 4), K)
    counts = reducer.sum_(torch.stack([v.sum() for v in valid]))
    model.zero_grad(set_to_none=True)
    result = ttt_unroll(
        model,
        batch,
        valid,
        counts.clamp(min=1).float(),
        head[model.draft_to_target],
        backend,
        loss_chunk_size=4,
        activation_checkpointing=checkpointing,
    )
    # Bucketed: 1 KiB buckets, so the gradient all-reduces run during the backward's own collectives;
    # else one bucket (``grad_bucket_mb = 0``), summed after the backward.
    buckets = reducer.bucketed(list(model.parameters()), 1 / 1024 if bucketed else 0)
    if buckets is not None:
        buckets.arm()
    result.loss.backward()
    loss = reducer.sum_(result.loss.detach().clone())
    if buckets is not None:
        buckets.finish()
        buckets.close()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _shard(sample, layout, r):
    n_seg, seg = layout.num_segments, layout.segment_length
    part = lambda x: split_tensor(x, layout, r).reshape(1, n_seg, seg, *x.shape[1:])  # noqa: E731
    return ShardBatch(
        part(sample["input_ids"]),
        part(sample["aux_hidden"]),
        part(sample["last_hidden"]),
        part(sample["loss_mask"]),
        layout.valid_mask(r).reshape(1, n_seg, seg),
        layout.query_positions(r),
        (layout.length,),
    )


def _worker(rank, world):
    out = []
    for u, r, layout_name, length in CASES[world]:
        model, head = tiny_draft(num_attention_heads=4, num_key_value_heads=2)
        sample = random_samples([length], seed=length)[0]
        sample["loss_mask"][: length // 2] = False  # the first shard(s) carry no loss tokens
        mesh = USPMesh.build(u, r, 4, 2)
        layout = ShardLayout(length, u, r, K, layout_name)
        ref_loss, ref_grads = _unroll(
            model, head, batch_of([sample], K), make_attention_backend("reference"), SumReducer(None), False
        )
        for ring_mode in ("ring", "gather"):
            backend = USPAttentionBackend(mesh, 4, 2, layout_name, ring_mode=ring_mode)
            for checkpointing, bucketed in ((False, False), (True, False), (False, True)):
                loss, grads = _unroll(
                    model,
                    head,
                    _shard(sample, layout, rank),
                    backend,
                    SumReducer(dist.group.WORLD),
                    checkpointing,
                    bucketed,
                )
                worst = max((grads[n] - g).abs().max().item() for n, g in ref_grads.items())
                out.append(
                    {
                        "case": (u, r, layout_name, length, ring_mode, checkpointing, bucketed),
                        "loss": (loss, ref_loss),
                        "grad_err": worst,
                    }
                )
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("world", [2, 4])
def test_usp_unroll_equals_single_device(world):
    results = run_ranks(_worker, world, timeout_s=200)
    for rank_results in results:
        for item in rank_results:
            loss, ref = item["loss"]
            assert abs(loss - ref) < 1e-5 * max(1.0, abs(ref)), item
            assert item["grad_err"] < 1e-5, item
