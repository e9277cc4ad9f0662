"""HF target engine: aux capture, final-norm last hidden state, padding, aux-layer validation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from longdraft.engines.base import TargetEngine
from longdraft.engines.hf import HFTargetEngine
from longdraft.errors import UserError
from longdraft.target.aux_layers import default_aux_layers, resolve_aux_layers
from longdraft.target.weights import head_rows, load_embedding_and_head

ATOL = 1e-5


@pytest.fixture(scope="module")
def target_dir(tiny_target):
    return tiny_target(num_layers=8, seed=3, initializer_range=0.2)


@pytest.fixture(scope="module")
def engine(target_dir):
    return HFTargetEngine(target_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def reference_model(target_dir):
    return AutoModelForCausalLM.from_pretrained(target_dir, local_files_only=True, dtype=torch.float32).eval()


def batch_of_ids(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def test_engine_properties(engine, reference_model):
    assert isinstance(engine, TargetEngine)
    cfg = reference_model.config
    assert (engine.hidden_size, engine.vocab_size, engine.num_layers) == (cfg.hidden_size, cfg.vocab_size, 8)
    assert engine.aux_layers == [1, 3, 4] == default_aux_layers(8)


def test_head_weights_read_from_safetensors_equal_the_model(target_dir, reference_model):
    embedding, head = load_embedding_and_head(target_dir, tied=False)
    assert torch.equal(head, reference_model.lm_head.weight) and not head.requires_grad
    assert torch.equal(embedding, reference_model.model.embed_tokens.weight)
    assert head_rows(target_dir) == reference_model.config.vocab_size


@torch.no_grad()
def test_aux_and_last_hidden_match_output_hidden_states(engine, reference_model):
    ids = batch_of_ids([13], engine.vocab_size)[0]
    (feat,) = engine.prefill([ids])
    out = reference_model(torch.tensor([ids]), output_hidden_states=True)
    hs = out.hidden_states
    expected_aux = torch.cat([hs[i + 1][0] for i in [1, 3, 4]], dim=-1)  # output of layer i
    H = engine.hidden_size
    assert feat.aux_hidden.shape == (13, 3 * H) and feat.last_hidden.shape == (13, H)
    torch.testing.assert_close(feat.aux_hidden, expected_aux, atol=ATOL, rtol=0)
    # the three blocks are in ascending layer order and distinct
    assert not torch.allclose(feat.aux_hidden[:, :H], feat.aux_hidden[:, H : 2 * H])
    # HF's last hidden_states entry is taken after the final norm.
    torch.testing.assert_close(feat.last_hidden, hs[-1][0], atol=ATOL, rtol=0)
    logits = feat.last_hidden @ reference_model.lm_head.weight.T
    torch.testing.assert_close(logits, out.logits[0], atol=ATOL, rtol=0)


@torch.no_grad()
def test_last_hidden_is_the_final_norm_output(engine, reference_model):
    ids = batch_of_ids([9], engine.vocab_size, seed=5)[0]
    captured = {}
    layer = reference_model.model.layers[-1]
    handle = layer.register_forward_hook(
        lambda m, i, o: captured.__setitem__("pre", o[0] if isinstance(o, tuple) else o)
    )
    try:
        reference_model(torch.tensor([ids]))
    finally:
        handle.remove()
    (feat,) = engine.prefill([ids])
    torch.testing.assert_close(feat.last_hidden, reference_model.model.norm(captured["pre"])[0], atol=ATOL, rtol=0)


@torch.no_grad()
def test_padded_batch_equals_single_prefill(engine, reference_model):
    batch = batch_of_ids([5, 17, 1, 11], engine.vocab_size, seed=1)
    feats = engine.prefill(batch)
    assert [f.length for f in feats] == [5, 17, 1, 11]
    for ids, f in zip(batch, feats):
        (single,) = engine.prefill([ids])
        torch.testing.assert_close(f.aux_hidden, single.aux_hidden, atol=ATOL, rtol=0)
        torch.testing.assert_close(f.last_hidden, single.last_hidden, atol=ATOL, rtol=0)
        logits = reference_model(torch.tensor([ids])).logits[0]
        torch.testing.assert_close(f.last_hidden @ reference_model.lm_head.weight.T, logits, atol=ATOL, rtol=0)
    assert engine.prefill([]) == []


def test_custom_aux_layers_sorted_and_validated(target_dir, reference_model):
    eng = HFTargetEngine(target_dir, aux_layers=[6, 0, 2], dtype="fp32")
    assert eng.aux_layers == [0, 2, 6]
    ids = batch_of_ids([7], eng.vocab_size, seed=2)[0]
    (feat,) = eng.prefill([ids])
    with torch.no_grad():
        hs = reference_model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(feat.aux_hidden, torch.cat([hs[i + 1][0] for i in [0, 2, 6]], -1), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"ids \[8\] are outside \[0, 8\)"):
        HFTargetEngine(target_dir, aux_layers=[1, 2, 8])
    with pytest.raises(ValueError, match="3 distinct"):
        resolve_aux_layers([1, 1, 2], 8)
    with pytest.raises(ValueError, match="exactly 3"):
        resolve_aux_layers([1, 2], 8)
    with pytest.raises(ValueError, match="N=4"):
        resolve_aux_layers(None, 4)
    with pytest.raises(ValueError, match="outside the target vocab"):
        eng.prefill([[0, eng.vocab_size]])
    with pytest.raises(UserError, match="has no config.json"):
        HFTargetEngine(target_dir / "nope")


def test_bf16_engine_runs(target_dir):
    eng = HFTargetEngine(target_dir, dtype="bf16")
    (feat,) = eng.prefill([[1, 2, 3]])
    assert feat.aux_hidden.dtype == torch.bfloat16 and eng.dtype == torch.bfloat16


def _hooked_modules(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def test_close_takes_the_capture_hooks_off_the_model(target_dir):
    from longdraft.eval.target_runner import TargetRunner

    eng = HFTargetEngine(target_dir, aux_layers=[0, 2, 6], dtype="fp32")
    assert _hooked_modules(eng.model) == ["model.layers.0", "model.layers.2", "model.layers.6", "model.norm"]
    eng.close()
    assert _hooked_modules(eng.model) == []
    runner = TargetRunner(eng.model, [1, 3, 4])  # the evaluator's target installs the same capture
    assert _hooked_modules(eng.model) == ["model.layers.1", "model.layers.3", "model.layers.4"]
    runner.close()
    assert _hooked_modules(eng.model) == []
