"""The draft's architecture, derived from the target's `TargetSpec`.

The draft is one Llama decoder layer with the target's hidden size, heads and RoPE (that of its
full-attention layers), so a ``LlamaConfig`` describes it; only ``draft_vocab_size``,
``target_hidden_size``, ``target_dtype`` and ``aux_layers`` are extra.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import LlamaConfig, PretrainedConfig

from longdraft.target.spec import TargetSpec, rope_settings


def draft_config_from_target(
    target: TargetSpec | PretrainedConfig, draft_vocab_size: int | None = None, aux_layers: Sequence[int] | None = None
) -> LlamaConfig:
    """A one-layer Llama config matching the target's width, heads, norms and RoPE; ``aux_layers``
    (default [1, N/2-1, N-4]) are the target layers whose outputs it is trained on. A transformers
    config (tests, benchmarks) is read through `TargetSpec` first."""
    spec = target if isinstance(target, TargetSpec) else TargetSpec.from_config(target)
    vocab = spec.vocab_size
    draft_vocab = vocab if draft_vocab_size is None else int(draft_vocab_size)
    if not 0 < draft_vocab <= vocab:
        raise ValueError(f"model.draft_vocab_size={draft_vocab_size} must be in 1..{vocab} (the target vocab size)")
    rope_parameters = {"rope_type": "default", **(spec.rope.scaling or {}), "rope_theta": spec.rope.theta}
    config = LlamaConfig(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        num_hidden_layers=1,
        hidden_act=spec.hidden_act,
        rms_norm_eps=spec.rms_norm_eps or 1e-6,  # the draft's own norms: any small eps
        max_position_embeddings=spec.max_position_embeddings or 2048,  # 2048: LlamaConfig's default
        vocab_size=vocab,
        rope_parameters=rope_parameters,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    config.draft_vocab_size = draft_vocab
    config.target_hidden_size = spec.hidden_size
    config.target_dtype = spec.dtype  # the export's dtype: serving engines load drafts in the target's
    config.aux_layers = spec.aux_layers(aux_layers)
    config.architectures = ["LlamaForCausalLMEagle3"]
    return config


def rope_theta_and_scaling(config: LlamaConfig) -> tuple[float, dict | None]:
    """What the export writes as ``rope_theta`` / ``rope_scaling`` (the draft's own Llama config)."""
    rope = rope_settings(config, "the draft config")
    return rope.theta, rope.scaling
