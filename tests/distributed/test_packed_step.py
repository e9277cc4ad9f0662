"""A packed optimizer step on real gloo ranks equals training the same documents as separate
sequences on one device: per-step loss, accuracies, counts and every parameter gradient within
1e-5 (fp32), for (DP, U, R) = (1, 2, 1), (1, 1, 2), (1, 2, 2) contiguous and zigzag, and (2, 2, 1).
Shards are built as a producer would (``pack_features``, ``split_sample`` on a packed layout) and
read as a trainer rank does (``read_shard``), documents in ``balanced_order`` (with a ring: not
longest first); the step is ``train_step`` itself."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from longdraft.attention.factory import make_attention_backend
from longdraft.attention.usp import USPAttentionBackend
from longdraft.parallel.mesh import USPMesh
from longdraft.parallel.reduction import SumReducer
from longdraft.sharding.layout import ShardGrid
from longdraft.sharding.packing import balanced_order, pack_features, pack_loss_masks, plan_micro_batches
from longdraft.sharding.reader import read_shard
from longdraft.sharding.split import split_sample
from longdraft.train.optim import build_optimizer, build_scheduler
from longdraft.train.step import StepSettings, train_step
from tests.draft_factory import batch_of, random_samples, tiny_draft
from tests.rank_runs import cached_run_ranks
from tests.unit.test_packing_exact import _mask, _tensors

K, BUDGET, TOL = 3, 48, 1e-5
# A one-token document, very different lengths; documents span shard boundaries.
LENGTHS = [1, 23, 5, 40, 9, 2, 17, 14, 30]
CASES = {  # world -> (DP, U, R, order, ring mode)
    2: [
        (1, 2, 1, "contiguous", "ring"),
        (1, 2, 1, "zigzag", "ring"),
        (1, 1, 2, "contiguous", "ring"),
        (1, 1, 2, "zigzag", "gather"),
    ],
    4: [
        (1, 2, 2, "contiguous", "ring"),
        (1, 2, 2, "zigzag", "gather"),
        (1, 2, 2, "zigzag", "ring"),
        (2, 2, 1, "contiguous", "ring"),
    ],
}


def _samples():
    samples = random_samples(LENGTHS, seed=7)
    samples[3]["loss_mask"][:] = False
    samples[3]["loss_mask"][2:6] = True  # a document whose loss tokens all sit on one rank
    samples[8]["loss_mask"][:] = False
    samples[8]["loss_mask"][-2:] = True  # loss only at the document's end
    return samples


def _step(model, head, batches, backend, reducer, ulysses=1):
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, 1e-3, 0.0)
    scheduler = build_scheduler(optimizer, 0, 10, 1e-3, 1e-4)
    settings = StepSettings(ttt_length=K, loss_chunk_size=8, max_grad_norm=0, grad_bucket_mb=0.001, ulysses=ulysses)
    metrics = train_step(model, batches, backend, head, optimizer, scheduler, settings, reducer)
    return metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(got, grads, ref, ref_grads) -> dict:
    return {
        "counts": (got["count_k"], ref["count_k"]),
        "metric_err": max(
            [abs(got[k] - ref[k]) for k in ("loss", "sim_acc_len", "chain_acc_len")]
            + [abs(a - b) for k in ("loss_k", "acc_k") for a, b in zip(got[k], ref[k])]
        ),
        "grad_err": max((grads[n] - g).abs().max().item() for n, g in ref_grads.items()),
        "same_params": grads.keys() == ref_grads.keys(),
        "pairs": got["attention_pairs"],
        "imbalance": got["attention_imbalance"],
    }


def _worker(rank: int, world: int) -> dict:
    torch.set_num_threads(1)
    model, head = tiny_draft(num_attention_heads=4, num_key_value_heads=2)
    samples = _samples()
    ref, ref_grads = _step(
        model, head, [batch_of([s], K) for s in samples], make_attention_backend("fast"), SumReducer()
    )
    plan = plan_micro_batches(LENGTHS, BUDGET)
    meshes, results = {}, {}
    for dp, u, r, order, ring_mode in CASES[world]:
        if (u, r) not in meshes:
            meshes[(u, r)] = USPMesh.build(u, r, 4, 2)
        mesh = meshes[(u, r)]
        grid = ShardGrid(u, r, K, order)
        sp = mesh.coords.sp_rank
        mine = plan[mesh.coords.dp :: dp]  # DP replicas take alternate micro-batches
        batches = []
        for group in mine:
            group = [group[i] for i in balanced_order([LENGTHS[j] for j in group], grid)]  # R > 1: reordered
            docs = [samples[i] for i in group]
            layout = grid.for_documents([len(s["input_ids"]) for s in docs])
            shard = split_sample(pack_features([_tensors(s) for s in docs]), layout)[sp]
            mask = pack_loss_masks([_mask(s) for s in docs], layout.documents or (layout.length,))
            batches.append(read_shard(shard, layout, sp, mask))
        backend = USPAttentionBackend(mesh, 4, 2, order, ring_mode=ring_mode)
        got, grads = _step(model, head, batches, backend, SumReducer(dist.group.WORLD), u)
        results[(dp, u, r, order, ring_mode)] = _compare(got, grads, ref, ref_grads)
    return results


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "world,case", [pytest.param(w, c, id="DP{}U{}R{}-{}-{}".format(*c)) for w, cs in CASES.items() for c in cs]
)
def test_packed_step_on_ranks_equals_one_device_unpacked(world, case):
    per_rank = [r[case] for r in cached_run_ranks(_worker, world, timeout_s=280)]
    for item in per_rank:
        got, want = item["counts"]
        assert got == want and want[0] > 0, item
        assert item["same_params"], item
        assert item["metric_err"] <= TOL and item["grad_err"] <= TOL, item
    pairs = per_rank[0]["pairs"]
    assert sum(pairs) == pytest.approx(sum(n * (n + 1) // 2 for n in LENGTHS))  # each document's causal pairs, once
    u = case[1]
    assert all(len(set(pairs[i : i + u])) == 1 for i in range(0, len(pairs), u))  # a Ulysses group shares its work
    assert per_rank[0]["imbalance"] == pytest.approx(max(pairs) / (sum(pairs) / len(pairs)) - 1)
