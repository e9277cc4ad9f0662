"""Tiny, real, offline target models for tests and smoke runs.

`build_tiny_target` writes a random-weight `LlamaForCausalLM` plus a real byte-level BPE
tokenizer (trained on a few built-in sentences) with a Jinja chat template, so that
`AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` work
without network. `write_tiny_jsonl` writes a matching small data set.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
HEADER_START, HEADER_END, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END, HEADER_START, HEADER_END, EOT]

# ChatML (Qwen-like): no BOS, every turn ends with <|im_end|> + newline.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-3-like: BOS once, header tokens around the role, contents trimmed, <|eot_id|> ends a turn.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim }}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CHAT_TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE}
# The token that ends an assistant turn (and the tokenizer's eos) for each template.
END_OF_TURN = {"chatml": IM_END, "llama3": EOT}

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A speculative decoding draft model predicts several tokens ahead.",
    "The target model verifies the draft tokens in a single forward pass.",
    "Long sequences are split across several ranks with sequence parallelism.",
    "Ring attention passes key and value blocks around a ring of devices.",
    "Ulysses attention exchanges heads and sequence chunks with an all to all.",
    "What is the capital of France? The capital of France is Paris.",
    "Please write a short poem about the sea and the wind.",
    "The sea is wide, the wind is free, the waves come rolling back to me.",
    "How many legs does a spider have? A spider has eight legs.",
    "Explain why the sky is blue in one sentence.",
    "Sunlight scatters off air molecules, and blue light scatters the most.",
    "You are a helpful assistant. Answer briefly and clearly.",
    "Training uses a loss mask so that only assistant tokens carry loss.",
    "Numbers like 1, 2, 3, 42 and 2048 appear in text as well.",
    "system user assistant human gpt hello thanks goodbye yes no maybe",
]

_USER_PROMPTS = [
    "What is the capital of France?",
    "Please write a short poem about the sea.",
    "How many legs does a spider have?",
    "Explain why the sky is blue.",
    "What does a draft model do?",
    "Say hello.",
]
_ASSISTANT_REPLIES = [
    "The capital of France is Paris.",
    "The sea is wide, the wind is free.",
    "A spider has eight legs.",
    "Sunlight scatters off air molecules, and blue light scatters the most.",
    "It predicts several tokens ahead for the target model to verify.",
    "Hello! How can I help you today?",
]


def _train_tokenizer(vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES + _USER_PROMPTS + _ASSISTANT_REPLIES, trainer=trainer)
    # Fill up to exactly vocab_size so tokenizer and model vocab agree.
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True) for i in range(missing)])
    return tok


def save_tiny_tokenizer(out: Path, vocab_size: int, chat_template: str, max_positions: int) -> tuple[Any, dict]:
    """Train the tiny byte-level tokenizer, save it with ``chat_template`` to ``out``; returns the raw
    tokenizer and the config's special-token ids (``bos_token_id``, ``eos_token_id``, ``pad_token_id``)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    raw = _train_tokenizer(vocab_size)
    bos_id = raw.token_to_id(BOS)
    if chat_template == "llama3":  # Llama-3 tokenizers prepend BOS to plain text; ChatML ones do not.
        raw.post_processor = TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        )
    eos = END_OF_TURN[chat_template]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=eos,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATES[chat_template],
        model_max_length=max_positions,
    )
    tokenizer.save_pretrained(out)
    return raw, special_token_ids(raw, eos)


def special_token_ids(raw: Any, eos: str) -> dict:
    """The ids a model config of the tiny tokenizer names: BOS, ``eos`` (the template's end of turn), PAD."""
    return {
        "bos_token_id": raw.token_to_id(BOS),
        "eos_token_id": raw.token_to_id(eos),
        "pad_token_id": raw.token_to_id(PAD),
    }


def build_tiny_target(
    out_dir: str | Path,
    *,
    vocab_size: int = 384,
    hidden_size: int = 32,
    num_layers: int = 8,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    chat_template: str = "chatml",
    seed: int = 0,
    max_position_embeddings: int = 16384,
    initializer_range: float = 0.02,
) -> Path:
    """Write a random tiny Llama target + tokenizer to `out_dir` and return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if chat_template not in CHAT_TEMPLATES:
        raise ValueError(f"chat_template={chat_template!r}: expected one of {sorted(CHAT_TEMPLATES)}")
    base_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size < base_size:
        raise ValueError(f"vocab_size={vocab_size} is too small: need at least {base_size} (bytes + special tokens)")

    out = Path(out_dir)
    raw, ids = save_tiny_tokenizer(out, vocab_size, chat_template, max_position_embeddings)

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        **ids,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(out)
    return out


def tiny_rows(
    num_conversations: int = 8,
    num_texts: int = 4,
    *,
    seed: int = 0,
    sharegpt: bool = False,
    text_sentences: int = 3,
) -> list[dict]:
    """Deterministic rows: conversations (optionally ShareGPT-style) and plain-text rows."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(num_conversations):
        turns: list[tuple[str, str]] = []
        if i % 3 == 0:
            turns.append(("system", "You are a helpful assistant."))
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(_USER_PROMPTS))
            turns.append(("user", _USER_PROMPTS[k]))
            turns.append(("assistant", _ASSISTANT_REPLIES[(k + rng.randrange(2)) % len(_ASSISTANT_REPLIES)]))
        if sharegpt:
            names = {"system": "system", "user": "human", "assistant": "gpt"}
            rows.append({"conversations": [{"from": names[r], "value": c} for r, c in turns]})
        else:
            rows.append({"conversations": [{"role": r, "content": c} for r, c in turns]})
    for _ in range(num_texts):
        rows.append({"text": " ".join(rng.choice(SENTENCES) for _ in range(text_sentences))})
    return rows


def write_tiny_jsonl(path: str | Path, rows: list[dict] | None = None, **row_kwargs) -> Path:
    """Write `rows` (default: `tiny_rows(**row_kwargs)`) as JSONL and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = tiny_rows(**row_kwargs) if rows is None else rows
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p
