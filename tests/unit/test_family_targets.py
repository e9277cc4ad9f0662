"""The family builders keep each family's quirk (transformers' config classes would silently drop an
unknown keyword) and save in the dtype asked for."""

import json

import pytest
import torch
from safetensors.torch import load_file

from longdraft.testing.families import FAMILIES, LAYERS, build_family_target, family_config

QUIRKS = {
    "llama-3.1": lambda c: c.rope_parameters["rope_type"] == "llama3" and not c.tie_word_embeddings,
    "qwen2": lambda c: c.tie_word_embeddings,
    "qwen3": lambda c: c.tie_word_embeddings,
    "qwen3-yarn": lambda c: c.rope_parameters["rope_type"] == "yarn",
    "qwen3-moe": lambda c: c.num_experts == 4,
    "mistral": lambda c: c.model_type == "mistral",
    "phi-3": lambda c: c.model_type == "phi3",
    "gemma-3": lambda c: (
        {"sliding_attention", "full_attention"} == set(c.layer_types)
        and c.rope_parameters["full_attention"]["rope_theta"] != c.rope_parameters["sliding_attention"]["rope_theta"]
    ),
    "gpt-oss": lambda c: (
        {"sliding_attention", "full_attention"} == set(c.layer_types)
        and c.rope_parameters["rope_type"] == "yarn"
        and c.num_local_experts == 4
    ),
    "olmo-2": lambda c: c.model_type == "olmo2",
    "granite": lambda c: c.logits_scaling != 1.0 and c.embedding_multiplier != 1.0,
    "deepseek-v3": lambda c: c.kv_lora_rank > 0 and c.n_routed_experts == 4,
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_config_keeps_the_family_quirk(name):
    config = family_config(name)
    assert config.num_hidden_layers == LAYERS
    assert QUIRKS[name](config), config


def test_a_bf16_target_is_saved_in_bf16(tmp_path):
    target = build_family_target("qwen3", tmp_path, dtype=torch.bfloat16)
    assert json.loads((target / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(str(target / "model.safetensors")).values()} == {torch.bfloat16}
