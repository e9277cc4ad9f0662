"""Twelve target families as tiny random-weight checkpoints, and what longdraft supports of each.

Each `Family` builds its config from transformers' own config class with the family's quirks kept
(RoPE scaling, tied embeddings, MoE, sliding + full layers, multipliers, MLA) and tiny dims: hidden
64 (2 heads of 32, 1 KV head), 8 layers (so the default aux layers [1, N/2-1, N-4] = [1, 3, 4] are
distinct), the vocab of the repo's tiny tokenizer. It also declares the EXPECTED status of three
columns (HF producer, vLLM producer, vLLM serving): `PASS` or the reason it does not; the tests
assert each, and the README's support table is generated from them
(`python -m longdraft.testing.families --markdown`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PASS = "pass"
VOCAB_SIZE = 384
HIDDEN = 64
LAYERS = 8
HEADS, KV_HEADS, HEAD_DIM = 2, 1, 32  # head_dim 32: vLLM's CPU attention refuses small head sizes
INTERMEDIATE = 128
MAX_POSITIONS = 16384
SLIDING_WINDOW = 16  # small, so the tests' prompts run past it and the sliding layers really slide

COLUMNS = {"hf_producer": "HF producer", "vllm_producer": "vLLM producer", "vllm_serving": "vLLM serving"}


@dataclass(frozen=True)
class Family:
    name: str  # the key of FAMILIES and the tests' parameter id
    title: str  # as the README names it
    make_config: Callable[[dict], object]  # token ids (bos/eos/pad) -> the transformers config
    chat_template: str = "chatml"
    hf_producer: str = PASS
    vllm_producer: str = PASS
    vllm_serving: str = PASS

    def status(self, column: str) -> str:
        if column not in COLUMNS:
            raise KeyError(f"column {column!r}: expected one of {sorted(COLUMNS)}")
        return getattr(self, column)


def _dense(ids: dict) -> dict:
    """The keyword arguments every family shares (each config class ignores none of them)."""
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        **ids,
    )


def _llama31(ids):
    from transformers import LlamaConfig

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 2048,
    }
    return LlamaConfig(**_dense(ids), rope_parameters=rope, tie_word_embeddings=False)


def _qwen2(ids):
    from transformers import Qwen2Config

    return Qwen2Config(
        **_dense(ids), rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True
    )


def _qwen3(ids, rope=None):
    from transformers import Qwen3Config

    rope = rope or {"rope_type": "default", "rope_theta": 1e6}
    return Qwen3Config(**_dense(ids), head_dim=HEAD_DIM, rope_parameters=rope, tie_word_embeddings=True)


def _qwen3_yarn(ids):
    rope = {
        "rope_type": "yarn",
        "rope_theta": 1e6,
        "factor": 4.0,
        "original_max_position_embeddings": MAX_POSITIONS // 4,
    }
    return _qwen3(ids, rope)


def _qwen3_moe(ids):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        **_dense(ids),
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        tie_word_embeddings=False,
    )


def _mistral(ids):
    from transformers import MistralConfig

    return MistralConfig(
        **_dense(ids),
        head_dim=HEAD_DIM,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        sliding_window=None,
    )


def _phi3(ids):
    from transformers import Phi3Config

    return Phi3Config(**_dense(ids), rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def _gemma3(ids):
    from transformers import Gemma3TextConfig

    # Gemma-3 4B+: sliding layers RoPE base 10k, the full-attention layers 1M with linear scaling x8.
    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
    }
    return Gemma3TextConfig(
        **_dense(ids),
        head_dim=HEAD_DIM,
        query_pre_attn_scalar=HEAD_DIM,
        sliding_window=SLIDING_WINDOW,
        rope_parameters=rope,
        tie_word_embeddings=True,
    )


def _gpt_oss(ids):
    from transformers import GptOssConfig

    rope = {
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 4.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": MAX_POSITIONS // 4,
    }
    kwargs = _dense(ids)
    return GptOssConfig(
        **kwargs,
        head_dim=HEAD_DIM,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=SLIDING_WINDOW,
        rope_parameters=rope,
        tie_word_embeddings=False,
    )


def _olmo2(ids):
    from transformers import Olmo2Config

    return Olmo2Config(**_dense(ids), rope_parameters={"rope_type": "default", "rope_theta": 500000.0})


def _granite(ids):
    from transformers import GraniteConfig

    # Granite-3 values: logits are divided by logits_scaling; embeddings, residuals, attention scaled.
    return GraniteConfig(
        **_dense(ids),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        embedding_multiplier=12.0,
        logits_scaling=8.0,
        residual_multiplier=0.22,
        attention_multiplier=1.0 / HEAD_DIM,
        tie_word_embeddings=True,
    )


def _deepseek_v3(ids):
    from transformers import DeepseekV3Config

    kwargs = _dense(ids)
    kwargs["num_key_value_heads"] = HEADS  # MLA: one latent KV, expanded per head
    return DeepseekV3Config(
        **kwargs,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        kv_lora_rank=32,
        q_lora_rank=48,
        qk_rope_head_dim=8,
        qk_nope_head_dim=HEAD_DIM - 8,
        v_head_dim=HEAD_DIM,
        moe_intermediate_size=32,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        tie_word_embeddings=False,
    )


# vLLM's own words after "vLLM 0.32 (CPU): ", which tests/vllm/test_families_vllm.py finds in vLLM's log.
NO_EAGLE3 = "vLLM 0.32 (CPU): Model does not support EAGLE3 interface"
# transformers' DeepseekV3Config has no `topk_method`, so vLLM builds no router bias for the one the
# checkpoint holds. (With topk_method="noaux_tc" it loads, then stops at the first prefill: "Head
# dimension 40 is not supported by MLA": its CPU MLA kernel takes only kv_lora_rank + rope = 576.)
DEEPSEEK_V3_LOAD = "vLLM 0.32 (CPU): KeyError: 'layers.1.mlp.gate.e_score_correction_bias'"

_FAMILY_LIST = [
    Family("llama-3.1", "Llama-3.1 (`llama3` RoPE)", _llama31, chat_template="llama3"),
    Family("qwen2", "Qwen2 (tied embeddings)", _qwen2),
    Family("qwen3", "Qwen3 (tied embeddings)", _qwen3),
    Family("qwen3-yarn", "Qwen3 with YaRN", _qwen3_yarn),
    Family("qwen3-moe", "Qwen3-MoE", _qwen3_moe),
    Family("mistral", "Mistral", _mistral),
    Family("phi-3", "Phi-3", _phi3),
    Family(
        "gemma-3",
        "Gemma-3 (text; sliding + full layers)",
        _gemma3,
        vllm_producer=f"{NO_EAGLE3} but aux_hidden_state_outputs was requested",
        vllm_serving=f"{NO_EAGLE3} but aux_hidden_state_outputs was requested",
    ),
    Family("gpt-oss", "gpt-oss (MoE, sliding + full layers, YaRN)", _gpt_oss),
    Family("olmo-2", "OLMo-2", _olmo2),
    Family("granite", "Granite (multipliers, `logits_scaling`)", _granite),
    Family(
        "deepseek-v3",
        "DeepSeek-V3 (MLA, MoE)",
        _deepseek_v3,
        vllm_producer=DEEPSEEK_V3_LOAD,
        vllm_serving=DEEPSEEK_V3_LOAD,
    ),
]
FAMILIES: dict[str, Family] = {f.name: f for f in _FAMILY_LIST}


def family_config(name: str):
    """The transformers config of family ``name`` with the tiny tokenizer's special-token ids."""
    from longdraft.testing.tiny_target import END_OF_TURN, _train_tokenizer, special_token_ids

    family = _family(name)
    raw = _train_tokenizer(VOCAB_SIZE)
    return _config(family, special_token_ids(raw, END_OF_TURN[family.chat_template]))


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"family {name!r}: expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def _config(family: Family, ids: dict):
    config = family.make_config(ids)
    if config.vocab_size != VOCAB_SIZE or config.num_hidden_layers != LAYERS:
        raise AssertionError(f"{family.name}: the config class dropped vocab_size or num_hidden_layers")
    return config


def build_family_target(name: str, out_dir: str | Path, dtype=None, *, seed: int = 0) -> Path:
    """Write family ``name`` as a random-weight checkpoint (``dtype``, default fp32) plus the tiny
    tokenizer to ``out_dir``, loadable offline with ``AutoModelForCausalLM``/``AutoTokenizer``."""
    import torch
    from transformers import AutoModelForCausalLM

    from longdraft.testing.tiny_target import save_tiny_tokenizer

    dtype = torch.float32 if dtype is None else dtype
    family = _family(name)
    out = Path(out_dir)
    _, ids = save_tiny_tokenizer(out, VOCAB_SIZE, family.chat_template, MAX_POSITIONS)
    config = _config(family, ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.to(dtype).save_pretrained(out)
    return out


def _cell(status: str) -> str:
    return "yes" if status == PASS else f"no: {status}"


def support_table_markdown() -> str:
    """The README's support table, one row per family, from the declarations the tests assert."""
    lines = ["| Family | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for family in FAMILIES.values():
        lines.append(f"| {family.title} | " + " | ".join(_cell(family.status(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the README support table")
    parser.add_argument("--build", nargs=2, metavar=("FAMILY", "DIR"), help="write one family's tiny target")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="the dtype --build saves")
    args = parser.parse_args(argv)
    if args.build:
        import torch

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
        print(build_family_target(*args.build, dtype=dtype))
    if args.markdown or not args.build:
        print(support_table_markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
