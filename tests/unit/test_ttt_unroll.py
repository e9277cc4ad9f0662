"""Model-level properties of the unroll: backends agree, checkpointing is exact, loss is the direct formula."""

import pytest
import torch

from longdraft.attention.factory import make_attention_backend
from longdraft.model.ttt import step_valid_masks, target_ok, ttt_unroll
from tests.draft_factory import batch_of, random_samples, tiny_draft

K = 4


def _run(model, target_head, batch, backend="fast", checkpointing=False, chunk=5):
    valid = step_valid_masks(batch, target_ok(batch, target_head, model.t2d, 3), K)
    counts = torch.stack([v.sum() for v in valid]).clamp(min=1).float()
    model.zero_grad(set_to_none=True)
    result = ttt_unroll(
        model,
        batch,
        valid,
        counts,
        target_head[model.draft_to_target],
        make_attention_backend(backend),
        chunk,
        checkpointing,
    )
    result.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return result, grads


@pytest.mark.parametrize("backend,checkpointing", [("reference", False), ("fast", True)])
def test_same_loss_and_gradients(backend, checkpointing):
    model, head = tiny_draft()
    batch = batch_of(random_samples([11, 7, 9]), K)
    base, base_grads = _run(model, head, batch)
    other, other_grads = _run(model, head, batch, backend, checkpointing, chunk=1000)
    assert abs(base.loss.item() - other.loss.item()) < 1e-6
    assert torch.equal(base.counts, other.counts) and torch.equal(base.correct, other.correct)
    for name, g in base_grads.items():
        assert (g - other_grads[name]).abs().max() < 1e-6, name


def test_loss_is_the_weighted_soft_cross_entropy():
    model, head = tiny_draft()
    batch = batch_of(random_samples([9]), K)
    result, _ = _run(model, head, batch)
    # Recompute each step's loss from the draft's own logits with plain autograd-free math.
    valid = step_valid_masks(batch, target_ok(batch, head, model.t2d, 3), K)
    expected, feature = 0.0, model.fc(batch.aux_hidden[:, 0, :9])
    keys, values = [], []
    backend = make_attention_backend("reference")
    with torch.no_grad():
        for k in range(K):
            emb = model.embed(batch.input_ids[:, 0, k + 1 : k + 10])
            cos, sin = model.rope(feature, (batch.positions + k).unsqueeze(0))
            feature = model.layer_step(emb, feature, cos, sin, keys, values, backend)
            rows = valid[k][0]
            logp = torch.log_softmax(model.logits(feature[0, rows]), -1)
            target = torch.softmax(batch.last_hidden[0, 0, k + 1 : k + 10][rows] @ head[model.draft_to_target].t(), -1)
            expected += 0.8**k * float(-(target * logp).sum()) / max(int(rows.sum()), 1)
    assert abs(result.loss.item() - expected) < 1e-5


def test_sample_without_loss_tokens_still_backpropagates():
    model, head = tiny_draft()
    sample = random_samples([8])[0]
    sample["loss_mask"][:] = False
    result, grads = _run(model, head, batch_of([sample], K))
    assert result.counts.sum() == 0 and result.loss.item() == 0.0
    # Connected to the graph (zero gradients exist), so a USP backward would run its collectives.
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


def test_segment_too_short_raises():
    model, head = tiny_draft()
    batch = batch_of(random_samples([3]), K)
    batch.input_ids = batch.input_ids[:, :, :K]
    with pytest.raises(ValueError, match="must exceed training.ttt_length"):
        step_valid_masks(batch, batch.is_real[:, :, :K], K)


def test_bf16_autocast_stays_within_bf16_rounding_of_fp32():
    # Autocast runs the matmuls in bf16 (8 mantissa bits, ~4e-3 relative per rounding) while the
    # parameters stay fp32 (master weights); the loss is a sum of fp32 soft cross-entropies of
    # bf16-rounded logits, so a few roundings deep it should agree to ~1e-2 relative.
    model, head = tiny_draft()
    batch = batch_of(random_samples([11, 7]), K)
    fp32, _ = _run(model, head, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, grads = _run(model, head, batch)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert abs(bf16.loss.item() - fp32.loss.item()) < 2e-2 * abs(fp32.loss.item())
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_features_stay_in_their_storage_dtype_until_used():
    model, head = tiny_draft()
    samples = random_samples([11, 7])
    for s in samples:  # features as a bf16 target writes them
        s["aux_hidden"], s["last_hidden"] = s["aux_hidden"].bfloat16(), s["last_hidden"].bfloat16()
    stored = batch_of(samples, K)
    assert stored.aux_hidden.dtype == stored.last_hidden.dtype == torch.bfloat16  # no fp32 copy on the trainer
    upcast = batch_of(
        [{**s, "aux_hidden": s["aux_hidden"].float(), "last_hidden": s["last_hidden"].float()} for s in samples], K
    )
    a, a_grads = _run(model, head, stored)
    b, b_grads = _run(model, head, upcast)
    assert a.loss.item() == b.loss.item()  # bf16 -> fp32 is exact: casting at use changes nothing
    assert all(torch.equal(a_grads[n], b_grads[n]) for n in a_grads)


def test_chain_counts_are_runs_of_right_steps_from_step_zero():
    model, head = tiny_draft()
    batch = batch_of(random_samples([11, 7, 9]), K)
    result, _ = _run(model, head, batch)
    chains, correct = result.chains.tolist(), result.correct.tolist()
    assert chains[0] == correct[0]  # step 0 alone: the chain is the agreement
    assert all(a >= b for a, b in zip(chains, chains[1:]))  # a chain only ever breaks
    assert all(ch <= min(correct[: k + 1]) for k, ch in enumerate(chains))
