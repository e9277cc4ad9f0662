"""Export layout and round trip: the loaded draft reproduces the trained model's logits exactly."""

import json

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
        "fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
        "midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight", "midlayer.post_attention_layernorm.weight",
        "midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight", "midlayer.self_attn.v_proj.weight",
        "midlayer.self_attn.o_proj.weight", "midlayer.mlp.gate_proj.weight", "midlayer.mlp.up_proj.weight",
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
