"""Export layout and round trip: the loaded draft reproduces the trained model's logits exactly, and
keeps the target's positions and RoPE (every variant transformers knows) for long-context serving."""

import json

import pytest
import torch
from safetensors.torch import load_file

from longdraft.attention.factory import make_attention_backend
from longdraft.train.export import export_draft, load_exported_draft
from tests.draft_factory import batch_of, random_samples, tiny_draft


def _logits(model, batch):
    c = batch.positions.numel()
    feature = model.fc(batch.aux_hidden[:, 0, :c])
    emb = model.embed(batch.input_ids[:, 0, 1 : c + 1])
    cos, sin = model.rope(feature, batch.positions.unsqueeze(0))
    return model.logits(model.layer_step(emb, feature, cos, sin, [], [], make_attention_backend("fast")))


def test_export_layout_and_round_trip(tmp_path):
    model, _ = tiny_draft(rope_theta=50000.0)
    for p in model.parameters():  # make every tensor distinct from its init
        torch.nn.init.normal_(p, std=0.1)
    out = export_draft(model, tmp_path / "final")
    tensors = load_file(str(out / "model.safetensors"))
    assert set(tensors) == {
        "fc.weight",
        "norm.weight",
        "lm_head.weight",
        "d2t",
        "t2d",
        "midlayer.input_layernorm.weight",
        "midlayer.hidden_norm.weight",
        "midlayer.post_attention_layernorm.weight",
        "midlayer.self_attn.q_proj.weight",
        "midlayer.self_attn.k_proj.weight",
        "midlayer.self_attn.v_proj.weight",
        "midlayer.self_attn.o_proj.weight",
        "midlayer.mlp.gate_proj.weight",
        "midlayer.mlp.up_proj.weight",
        "midlayer.mlp.down_proj.weight",
    }
    assert tensors["d2t"].dtype == torch.int64 and tensors["t2d"].dtype == torch.bool
    assert tensors["midlayer.self_attn.q_proj.weight"].shape[1] == 2 * model.config.hidden_size
    ids = torch.arange(30) + tensors["d2t"]
    assert tensors["t2d"][ids].all() and int(tensors["t2d"].sum()) == 30
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 1 and config["tie_word_embeddings"] is False
    assert config["vocab_size"] == 50 and config["draft_vocab_size"] == 30
    assert config["rope_theta"] == 50000.0

    loaded = load_exported_draft(out, model.embed_tokens)
    batch = batch_of(random_samples([12]), 1)
    with torch.no_grad():
        assert torch.equal(_logits(model, batch), _logits(loaded, batch))
    assert torch.equal(loaded.d2t, model.d2t) and torch.equal(loaded.t2d, model.t2d)


# One entry per RoPE variant transformers knows; a new variant fails the completeness check below
# until it is added here (and checked).
ROPE_VARIANTS = {
    "default": None,
    "linear": {"factor": 2.0},
    "dynamic": {"factor": 2.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 1024},
    "longrope": {
        "short_factor": [1.0 + 0.1 * i for i in range(4)],
        "long_factor": [2.0 + 0.5 * i for i in range(4)],
        "original_max_position_embeddings": 1024,
    },
    "llama3": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 1024,
    },
    "proportional": {"partial_rotary_factor": 0.5},
}


def test_every_transformers_rope_variant_is_checked():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    assert set(ROPE_INIT_FUNCTIONS) | {"default"} == set(ROPE_VARIANTS)


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_export_keeps_the_targets_positions_and_rope_exactly(tmp_path, variant):
    """What vLLM and SGLang read (max_position_embeddings, rope_theta, rope_scaling) is the target's,
    and the reloaded draft rotates every position up to it exactly as the draft trained and as the
    target's own rotary embedding does."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from tests.draft_factory import tiny_target_config

    extra = ROPE_VARIANTS[variant]
    params = {"rope_type": variant, "rope_theta": 500000.0, **(extra or {})}
    # head_dim 8: the longrope factors cover its 4 frequencies
    target = tiny_target_config(max_position_embeddings=4096, rope_parameters=params)
    model, _ = tiny_draft(max_position_embeddings=4096, rope_parameters=params)
    out = export_draft(model, tmp_path / variant, trained_length=4096)
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 4096 and config["rope_theta"] == 500000.0
    assert config["rope_scaling"] == (None if variant == "default" else {"rope_type": variant, **extra})

    loaded = load_exported_draft(out, model.embed_tokens)
    x = torch.zeros(1, 1, 8)
    positions = torch.arange(4096).unsqueeze(0)
    trained, served = model.rope(x, positions), loaded.rope(x, positions)
    reference = LlamaRotaryEmbedding(target)(x, positions)
    for a, b, c in zip(trained, served, reference):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_an_export_that_would_clamp_the_trained_positions_is_refused(tmp_path):
    model, _ = tiny_draft(max_position_embeddings=2048)
    with pytest.raises(
        ValueError,
        match=r"trained on sequences of 4096 tokens but its config says "
        r"max_position_embeddings = 2048",
    ):
        export_draft(model, tmp_path / "clamped", trained_length=4096)
    assert export_draft(model, tmp_path / "fits", trained_length=2048).is_dir()


def test_a_bf16_target_gives_a_bf16_export_saying_so(tmp_path):
    from longdraft.train.checkpoint import save_checkpoint
    from longdraft.train.export import export_config_dict
    from longdraft.train.export_checkpoint import export_checkpoint

    model, _ = tiny_draft(dtype="bfloat16")  # the draft trains in fp32; the target is a bf16 checkpoint
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    assert model.fc.weight.dtype == torch.float32
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    extra = {"draft_config": export_config_dict(model.config, torch.float32)}
    checkpoint = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, extra)
    for out in (export_draft(model, tmp_path / "final"), export_checkpoint(checkpoint, tmp_path / "from_checkpoint")):
        config = json.loads((out / "config.json").read_text())
        assert config["torch_dtype"] == config["dtype"] == "bfloat16"
        tensors = load_file(str(out / "model.safetensors"))
        assert {t.dtype for name, t in tensors.items() if name not in ("d2t", "t2d")} == {torch.bfloat16}
        assert torch.equal(tensors["fc.weight"], model.fc.weight.detach().bfloat16())
        loaded = load_exported_draft(out, model.embed_tokens)  # eval's loader: cast back to fp32
        assert loaded.fc.weight.dtype == torch.float32
        assert torch.equal(loaded.fc.weight, model.fc.weight.detach().bfloat16().float())
    fp32 = export_draft(tiny_draft()[0], tmp_path / "fp32")  # an fp32 target keeps an fp32 export
    assert json.loads((fp32 / "config.json").read_text())["dtype"] == "float32"
