"""The draft's architecture, derived from the target's HF config.

The draft is one Llama decoder layer with the target's hidden size, heads and RoPE, so a
``LlamaConfig`` describes it; only ``draft_vocab_size``, ``target_hidden_size`` and ``aux_layers``
are extra.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from transformers import LlamaConfig, PretrainedConfig

from longdraft.engines.base import resolve_aux_layers


def _rope_settings(target: PretrainedConfig) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) of a target config, across transformers config styles."""
    params = getattr(target, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(target, "rope_theta", 10000.0))
    scaling = {k: v for k, v in params.items() if k != "rope_theta"} or getattr(target, "rope_scaling", None)
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return float(theta), copy.deepcopy(scaling)


def draft_config_from_target(
    target: PretrainedConfig,
    draft_vocab_size: int | None = None,
    aux_layers: Sequence[int] | None = None,
    sliding_window: int | None = None,
) -> LlamaConfig:
    """A one-layer Llama config matching the target's width, heads, norms and RoPE; ``aux_layers``
    (default [1, N/2-1, N-4]) are the target layers whose outputs it is trained on;
    ``sliding_window`` (``model.draft_window``): the draft's attention window, None for full."""
    text = target.get_text_config() if hasattr(target, "get_text_config") else target
    theta, scaling = _rope_settings(text)
    vocab = int(text.vocab_size)
    draft_vocab = vocab if draft_vocab_size is None else int(draft_vocab_size)
    if not 0 < draft_vocab <= vocab:
        raise ValueError(f"model.draft_vocab_size={draft_vocab_size} must be in 1..{vocab} (the target vocab size)")
    rope_parameters = {"rope_type": "default", **(scaling or {}), "rope_theta": theta}
    config = LlamaConfig(
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        num_hidden_layers=1,
        hidden_act=getattr(text, "hidden_act", "silu"),
        rms_norm_eps=text.rms_norm_eps,
        max_position_embeddings=text.max_position_embeddings,
        vocab_size=vocab,
        rope_parameters=rope_parameters,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    config.draft_vocab_size = draft_vocab
    config.target_hidden_size = text.hidden_size
    config.aux_layers = resolve_aux_layers(aux_layers, int(text.num_hidden_layers))
    config.sliding_window = sliding_window
    config.architectures = ["LlamaForCausalLMEagle3"]
    return config


def rope_theta_and_scaling(config: LlamaConfig) -> tuple[float, dict | None]:
    """What the export writes as ``rope_theta`` / ``rope_scaling``."""
    return _rope_settings(config)
