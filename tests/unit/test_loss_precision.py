"""``training.loss_precision``: bf16/tf32 logits stay near fp32, TF32 is scoped to the loss, the frozen
head can live in bf16, and the per-run work (head rows, full-vocab mask) is not repeated."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import longdraft.model.loss as loss_module
import longdraft.model.ttt as ttt_module
from longdraft.attention.factory import make_attention_backend
from longdraft.model.loss import (
    frozen_dtype,
    resolve_loss_precision,
    soft_cross_entropy_steps,
    target_argmax_in_vocab,
)
from longdraft.model.target_head import TargetHead
from longdraft.model.ttt import step_valid_masks, target_ok, ttt_unroll
from longdraft.parallel.reduction import SumReducer
from longdraft.train.optim import build_optimizer, build_scheduler
from longdraft.train.step import StepSettings, train_step
from tests.draft_factory import batch_of, random_samples, tiny_draft

# bf16 operands carry 8 significant bits (relative rounding 2^-9 ≈ 0.2%) and the results are fp32:
# measured: the summed loss moves by ~2e-4 relative, gradients by ~1.5% of their largest entry.
BF16_LOSS_RTOL, BF16_GRAD_RTOL = 2e-3, 3e-2


def _problem(seed=0, n_targets=300, hidden=64, target_hidden=48, draft_vocab=512, steps=3):
    """Shifted steps as the unroll scores them, at logits scales like a trained head's (std ≈ 3)."""
    gen = torch.Generator().manual_seed(seed)
    th = torch.randn(n_targets, target_hidden, generator=gen)
    tw = torch.randn(draft_vocab, target_hidden, generator=gen) * 3 / target_hidden**0.5
    w = (torch.randn(draft_vocab, hidden, generator=gen) * 3 / hidden**0.5).requires_grad_()
    rows = [torch.arange(n_targets - k - 1) + k + 1 for k in range(steps)]
    xs = [torch.randn(len(r), hidden, generator=gen, requires_grad=True) for r in rows]
    return xs, rows, w, th, tw


def _loss_and_grads(precision, xs, rows, w, th, tw, chunk=64):
    sums, agrees = soft_cross_entropy_steps(xs, rows, w, th, tw, chunk, precision=precision)
    grads = torch.autograd.grad(sums.sum(), [w, *xs])
    return sums.detach(), grads, agrees


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_bf16_loss_and_gradients_are_within_tolerance_of_fp32():
    problem = _problem()
    exact, exact_grads, exact_agrees = _loss_and_grads("fp32", *problem)
    bf16, bf16_grads, bf16_agrees = _loss_and_grads("bf16", *problem)
    assert _rel(bf16, exact) < BF16_LOSS_RTOL
    assert _rel(bf16, exact) > 0, "bf16 must really round the operands, not run fp32"
    for got, want in zip(bf16_grads, exact_grads):
        assert got.dtype == want.dtype == torch.float32
        assert _rel(got, want) < BF16_GRAD_RTOL
    agree_rate = sum(int((a == b).sum()) for a, b in zip(bf16_agrees, exact_agrees)) / sum(len(a) for a in exact_agrees)
    assert agree_rate > 0.97  # argmax flips only on near-ties


def test_tf32_is_allowed_inside_the_loss_only_and_matches_fp32(monkeypatch):
    seen = []
    logits = loss_module._logits

    def spy(x, weight):
        seen.append(torch.get_float32_matmul_precision())
        return logits(x, weight)

    monkeypatch.setattr(loss_module, "_logits", spy)
    before = torch.get_float32_matmul_precision()
    problem = _problem(seed=1, n_targets=60)
    exact, exact_grads, _ = _loss_and_grads("fp32", *problem)
    seen.clear()
    tf32, tf32_grads, _ = _loss_and_grads("tf32", *problem)
    assert seen and set(seen) == {"high"}, "forward and backward matmuls may use TF32"
    assert torch.get_float32_matmul_precision() == before, "the global setting is restored"
    # CPUs have no TF32: the result is fp32's; on CUDA the bench reports the deviation.
    assert _rel(tf32, exact) < 1e-5
    for got, want in zip(tf32_grads, exact_grads):
        assert _rel(got, want) < 1e-5


def test_precision_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_loss_precision("auto", cpu) == "fp32"
    assert resolve_loss_precision("auto", cuda) == "bf16"
    assert resolve_loss_precision("tf32", cpu) == "tf32"
    assert frozen_dtype("bf16") == torch.bfloat16 and frozen_dtype("tf32") == frozen_dtype("fp32") == torch.float32
    with pytest.raises(ValueError, match="loss_precision"):
        resolve_loss_precision("fp16", cpu)


def test_bf16_target_mask_matches_fp32_away_from_ties():
    gen = torch.Generator().manual_seed(2)
    head = torch.randn(200, 32, generator=gen)
    hidden = head[torch.randint(0, 200, (50,), generator=gen)] * 4  # each row's argmax is its own head row, by far
    t2d = torch.rand(200, generator=gen) < 0.5
    exact = target_argmax_in_vocab(hidden, head, t2d, 16)
    assert torch.equal(target_argmax_in_vocab(hidden.bfloat16(), head.bfloat16(), t2d, 16, "bf16"), exact)


def _unroll(model, head, batch, precision, k=4):
    valid = step_valid_masks(batch, target_ok(batch, head.full, model.t2d, 5, precision), k)
    counts = torch.stack([v.sum() for v in valid]).clamp(min=1).float()
    model.zero_grad(set_to_none=True)
    backend = make_attention_backend("fast")
    result = ttt_unroll(model, batch, valid, counts, head.draft_rows, backend, 5, loss_precision=precision)
    result.loss.backward()
    return result.loss.item(), model.lm_head.weight.grad.clone(), model.fc.weight.grad.clone()


def test_unroll_with_bf16_resident_embedding_and_head_is_near_fp32():
    model, full = tiny_draft()
    batch = batch_of(random_samples([23, 17]), 4)
    exact = _unroll(model, TargetHead.cut(full, model.draft_to_target), batch, "fp32")
    model.embed_tokens = model.embed_tokens.bfloat16()  # as setup keeps it under bf16
    head16 = TargetHead.cut(full.bfloat16(), model.draft_to_target)
    assert head16.draft_rows.dtype == torch.bfloat16
    bf16 = _unroll(model, head16, batch, "bf16")
    assert abs(bf16[0] - exact[0]) < BF16_LOSS_RTOL * abs(exact[0])
    for got, want in zip(bf16[1:], exact[1:]):
        assert got.dtype == torch.float32 and _rel(got, want) < BF16_GRAD_RTOL


class _HeadIndexing(TorchFunctionMode):
    """Counts every indexing of one tensor (``head[...]``), however the code spells it."""

    def __init__(self, head):
        super().__init__()
        self.head, self.count = head, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.__getitem__, torch.index_select, torch.Tensor.index_select) and args[0] is self.head:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_head_rows_are_cut_once_and_the_vocab_mask_once_per_micro_batch(monkeypatch):
    model, full = tiny_draft()
    batches = [batch_of(random_samples([19, 13], seed=s), 4) for s in range(2)]
    mask_passes = []
    argmax = ttt_module.target_argmax_in_vocab
    monkeypatch.setattr(
        ttt_module, "target_argmax_in_vocab", lambda *a, **kw: mask_passes.append(1) or argmax(*a, **kw)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, 1e-3, 0.0)
    scheduler = build_scheduler(optimizer, 0, 10, 1e-3, 1e-4)
    settings = StepSettings(ttt_length=4, loss_chunk_size=5)
    with _HeadIndexing(full) as spy:
        head = TargetHead.cut(full, model.draft_to_target)  # setup's one cut
        for _ in range(3):
            metrics = train_step(
                model, batches, make_attention_backend("fast"), head, optimizer, scheduler, settings, SumReducer()
            )
    assert spy.count == 1, f"the target head was indexed {spy.count} times over 3 steps"
    assert len(mask_passes) == 3 * len(batches), "one full-vocabulary pass per micro-batch per step, not per TTT step"
    assert metrics["loss_tokens"] > 0


@pytest.mark.parametrize(
    "precision,dtype", [("bf16", torch.bfloat16), ("auto", torch.float32), ("tf32", torch.float32)]
)
def test_setup_keeps_the_frozen_embedding_and_head_in_the_loss_dtype(tmp_path, precision, dtype):
    from longdraft.config.loading import config_from_dict
    from longdraft.data.vocab import build_vocab_mapping
    from longdraft.testing.tiny_target import build_tiny_target
    from longdraft.train.setup import build_train_parts

    build_tiny_target(tmp_path / "target", vocab_size=384)
    cfg = config_from_dict(
        {
            "data": {"train_path": str(tmp_path / "train.jsonl")},
            "model": {"target_path": str(tmp_path / "target"), "draft_vocab_size": 100},
            "training": {"loss_precision": precision, "max_seq_length": 64},
            "output": {"dir": str(tmp_path / "out")},
        }
    )
    parts = build_train_parts(cfg, build_vocab_mapping([], 384, 100), torch.device("cpu"))  # auto on CPU: fp32
    assert parts.model.embed_tokens.dtype == parts.target_head.full.dtype == dtype
    assert torch.equal(parts.target_head.draft_rows, parts.target_head.full[parts.model.draft_to_target])
