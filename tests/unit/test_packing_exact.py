"""Packed training on one device equals training the same documents as separate sequences:
per-step loss, accuracies, counts and every parameter gradient within 1e-5 (fp32), and RoPE of
every packed document equals the document alone, for every RoPE variant."""

import copy

import pytest
import torch

from longdraft.attention.factory import make_attention_backend
from longdraft.data.loss_mask import pack_loss_mask
from longdraft.model.ttt import rope_at_step, step_valid_masks, target_ok
from longdraft.parallel.reduction import SumReducer
from longdraft.sharding.layout import ShardGrid
from longdraft.sharding.packing import pack_features, pack_loss_masks, plan_micro_batches
from longdraft.sharding.reader import packed_sequence_batch, read_shard
from longdraft.sharding.split import split_sample
from longdraft.train.optim import build_optimizer, build_scheduler
from longdraft.train.step import StepSettings, train_step
from tests.draft_factory import HIDDEN, batch_of, random_samples, tiny_draft
from tests.unit.test_sp_rope import VARIANTS, _draft, _one_device

K = 4
# A one-token document, documents of very different lengths, and (index 3) one whose loss tokens
# all sit at its very end (its last K positions have no target of their own document).
LENGTHS = [1, 23, 5, 61, 9, 2, 37, 14]


def _samples(seed: int = 0):
    samples = random_samples(LENGTHS, seed=seed)
    samples[3]["loss_mask"][:] = False
    samples[3]["loss_mask"][-3:] = True
    samples[5]["loss_mask"][:] = True  # two tokens, both trained: the second has no target at step 0
    return samples


def _tensors(s):
    return {k: s[k] for k in ("input_ids", "aux_hidden", "last_hidden")}


def _mask(s):
    return pack_loss_mask(s["loss_mask"].long().tolist())


def packed_batches(samples, budget: int):
    plan = plan_micro_batches([len(s["input_ids"]) for s in samples], budget)
    return [packed_sequence_batch([_tensors(samples[i]) for i in g], [_mask(samples[i]) for i in g], K) for g in plan]


def _step(model, head, batches, backend):
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, 1e-3, 0.0)
    scheduler = build_scheduler(optimizer, 0, 10, 1e-3, 1e-4)
    settings = StepSettings(ttt_length=K, loss_chunk_size=7, max_grad_norm=0)  # 0: gradients unclipped
    metrics = train_step(
        model, batches, make_attention_backend(backend), head, optimizer, scheduler, settings, SumReducer()
    )
    return metrics, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend,budget", [("fast", 40), ("fast", 1000), ("reference", 64)])
def test_packed_step_equals_unpacked(backend, budget):
    model, head = tiny_draft()
    samples = _samples()
    packed = packed_batches(samples, budget)
    assert len(packed) < len(samples)  # documents really share micro-batches
    ref, ref_grads = _step(model, head, [batch_of([s], K) for s in samples], backend)
    got, grads = _step(model, head, packed, backend)
    assert got["count_k"] == ref["count_k"] and ref["count_k"][0] > 0
    for key in ("loss", "sim_acc_len", "chain_acc_len"):
        assert abs(got[key] - ref[key]) < 1e-5, key
    for key in ("loss_k", "acc_k"):
        assert max(abs(a - b) for a, b in zip(got[key], ref[key])) < 1e-5, key
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        assert (grads[name] - g).abs().max() < 1e-5, name


def test_no_query_trains_on_another_documents_target():
    """Counts per step are exactly those of the documents alone: a query near a document's end is
    never valid on the next document's rows (without the document check the packed counts grow)."""
    model, head = tiny_draft()
    samples = _samples(seed=3)
    for s in samples:
        s["loss_mask"][:] = True
    (batch,) = packed_batches(samples, 10_000)
    ok = target_ok(batch, head, model.t2d, 5)
    packed = [int(v.sum()) for v in step_valid_masks(batch, ok, K)]
    alone = [0] * K
    for s in samples:
        b = batch_of([s], K)
        for k, v in enumerate(step_valid_masks(b, target_ok(b, head, model.t2d, 5), K)):
            alone[k] += int(v.sum())
    assert packed == alone


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("order", ["contiguous", "zigzag"])
def test_every_packed_document_rotates_as_it_would_alone(variant, order):
    model = _draft(variant)
    docs = (20, 97, 1, 50)  # below, past and between the variants' switch points
    samples = random_samples(docs, seed=1)
    sample = pack_features([_tensors(s) for s in samples])
    mask = pack_loss_masks([_mask(s) for s in samples], docs)
    upto = max(docs) + 2 * K + 100  # tail padding continues the last document's positions
    refs = [_one_device(variant, n, upto) for n in docs]
    ref_cos, ref_sin = torch.stack([c for c, _ in refs]), torch.stack([s for _, s in refs])  # [doc, pos, D]
    for u, r in [(1, 1), (2, 1), (2, 2), (1, 4)]:
        layout = ShardGrid(u, r, K, order).for_documents(docs)
        for rank, shard in enumerate(split_sample(sample, layout)):
            batch = read_shard(shard, layout, rank, mask)
            x = torch.zeros(1, batch.positions.numel(), HIDDEN)
            doc = layout.local_doc_ids(rank)[layout.query_mask(rank)]
            real = doc >= 0  # tail padding rotates with the last document's frequencies
            doc = torch.where(real, doc, torch.full_like(doc, len(docs) - 1))
            for k in range(K):
                cos, sin = rope_at_step(model, batch, x, k)
                where = batch.positions + k
                label = f"{variant} {order} U={u} R={r} rank {rank} step {k}"
                assert torch.equal(cos[0], ref_cos[doc, where]) and torch.equal(sin[0], ref_sin[doc, where]), label
