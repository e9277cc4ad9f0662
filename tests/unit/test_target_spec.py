"""`TargetSpec` reads each family's quirks by name: shapes, tied embeddings, the RoPE of the
full-attention layers, the final-norm kind and the logit transform; a quirk it does not know is
refused with one line naming the key and value. Configs are transformers' own config classes."""

import pytest
import torch
from transformers import (
    CohereConfig,
    DeepseekV3Config,
    Gemma3Config,
    Gemma3TextConfig,
    GraniteConfig,
    LlamaConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from longdraft.errors import UserError
from longdraft.model.draft_config import draft_config_from_target, rope_theta_and_scaling
from longdraft.target.spec import TargetSpec

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4)


def test_llama_3_1_fields_and_aux_layers():
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0}
    rope |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    config = LlamaConfig(**SMALL, num_key_value_heads=2, rope_parameters=rope, dtype="bfloat16")
    spec = TargetSpec.from_config(config)
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (8, 32, 4, 2, 8)
    assert (spec.vocab_size, spec.tied_embeddings, spec.dtype, spec.torch_dtype) == (
        64,
        False,
        "bfloat16",
        torch.bfloat16,
    )
    assert spec.rope.theta == 500000.0 and spec.rope.scaling["rope_type"] == "llama3"
    assert spec.rope.scaling["factor"] == 8.0 and "rope_theta" not in spec.rope.scaling
    assert spec.norm_kind == "weight" and spec.logits.is_identity
    assert spec.aux_layers() == [1, 3, 4] and spec.vllm_aux_layer_ids() == [2, 4, 5]
    assert spec.aux_layers([6, 0, 2]) == [0, 2, 6] and spec.vllm_aux_layer_ids([6, 0, 2]) == [1, 3, 7]


def test_qwen2_tied_reads_its_head_from_the_embedding(tmp_path):
    config = Qwen2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).float()
    model.save_pretrained(tmp_path)
    spec = TargetSpec.load(tmp_path)
    assert spec.tied_embeddings and spec.model_type == "qwen2" and spec.norm_kind == "weight"
    embedding, head = spec.embedding_and_head()
    assert head is embedding and torch.equal(head, model.lm_head.weight) and spec.head_rows() == 64
    assert torch.equal(spec.final_norm_weight(), model.model.norm.weight)


@pytest.mark.parametrize("multimodal", [False, True])
def test_gemma_3_takes_the_rope_of_its_full_attention_layers(multimodal):
    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
    }
    text = Gemma3TextConfig(**SMALL, num_key_value_heads=1, head_dim=16, rope_parameters=rope)
    spec = TargetSpec.from_config(Gemma3Config(text_config=text.to_dict()) if multimodal else text)
    assert spec.rope.theta == 1000000.0 and spec.rope.scaling == {"rope_type": "linear", "factor": 8.0}
    assert spec.norm_kind == "one_plus_weight" and spec.head_dim == 16 and spec.num_layers == 8
    draft = draft_config_from_target(spec)
    assert rope_theta_and_scaling(draft) == (1000000.0, {"rope_type": "linear", "factor": 8.0})


def test_gemma_3_without_a_full_attention_rope_is_refused():
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    text = Gemma3TextConfig(**SMALL, head_dim=16)
    text.rope_parameters = rope  # as a config naming only its sliding layers would read
    with pytest.raises(UserError, match=r"rope_parameters per layer type \['sliding_attention'\] have no"):
        TargetSpec.from_config(text)


def test_granite_scaling_and_gemma_soft_cap_are_the_logit_transform():
    spec = TargetSpec.from_config(GraniteConfig(**SMALL, logits_scaling=4.0))
    assert spec.logits.scale == 4.0 and spec.logits.softcap is None and spec.norm_kind == "weight"
    z = torch.tensor([8.0, -2.0])
    assert torch.equal(spec.logits.apply(z), z / 4)
    gemma = TargetSpec.from_config(Gemma3TextConfig(**SMALL, head_dim=16, final_logit_softcapping=30.0))
    assert gemma.logits.softcap == 30.0 and gemma.logits.scale == 1.0
    torch.testing.assert_close(gemma.logits.apply(z), 30 * torch.tanh(z / 30))
    with pytest.raises(UserError, match=r"logits_scaling = 0\.0; expected a positive number"):
        TargetSpec.from_config(GraniteConfig(**SMALL, logits_scaling=0.0))


def test_deepseek_v3_draft_heads_are_hidden_over_heads_on_purpose():
    config = DeepseekV3Config(**SMALL, num_key_value_heads=4, qk_rope_head_dim=4, v_head_dim=16, kv_lora_rank=8)
    assert config.head_dim == 4  # the RoPE part of its MLA heads, not a head width for the draft
    spec = TargetSpec.from_config(config)
    assert spec.head_dim == 32 // 4 and draft_config_from_target(spec).head_dim == 8


def test_an_unknown_logit_transform_is_refused_by_name():
    config = LlamaConfig(**SMALL)
    config.logit_scale = 0.5  # a Cohere-style multiplier on a family whose modeling code would apply it
    with pytest.raises(UserError, match=r"^the target config: logit_scale = 0\.5 \(Cohere multiplies") as err:
        TargetSpec.from_config(config)
    assert "\n" not in str(err.value)
    config.logit_scale = 1.0  # the trivial value changes nothing
    assert TargetSpec.from_config(config).logits.is_identity
    config.scale_width = True  # MiniCPM's switch: True == 1 must not read as trivial
    with pytest.raises(UserError, match=r"scale_width = True"):
        TargetSpec.from_config(config)


def test_a_family_whose_final_norm_is_unknown_is_refused_by_name(tmp_path):
    CohereConfig(**SMALL).save_pretrained(tmp_path)  # LayerNorm final norm, logits multiplied by logit_scale
    with pytest.raises(UserError, match=r"config\.json: model_type = 'cohere', a family whose final norm"):
        TargetSpec.load(tmp_path)


def test_a_directory_without_a_config_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"has no config\.json \(only local checkpoints"):
        TargetSpec.load(tmp_path)
