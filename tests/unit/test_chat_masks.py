"""Assistant-only loss masks from real chat templates (ChatML-like and Llama-3-like)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from longdraft.data.errors import DataError
from longdraft.data.rows import Conversation, PlainText
from longdraft.data.tokenize import tokenize_conversation, tokenize_row
from longdraft.testing.tiny_target import END_OF_TURN, build_tiny_target

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "How many legs does a spider have?"},
    {"role": "assistant", "content": "A spider has eight legs."},
]


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def template_and_tokenizer(request, tmp_path_factory):
    path = build_tiny_target(tmp_path_factory.mktemp(request.param), chat_template=request.param)
    return request.param, AutoTokenizer.from_pretrained(path, local_files_only=True)


def masked_runs(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """Decode each maximal run of loss tokens separately."""
    runs, current = [], []
    for token, bit in zip(ids, mask):
        if bit:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_mask_covers_exactly_the_assistant_contents(template_and_tokenizer):
    name, tok = template_and_tokenizer
    ids, mask = tokenize_conversation(tok, CONVERSATION)
    # Same ids as the tokenizer's own chat-template tokenisation.
    assert ids == list(tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"])
    eot = END_OF_TURN[name]
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert masked_runs(tok, ids, mask) == [r + eot for r in replies]
    # Everything outside the mask decodes to the non-assistant part of the rendering.
    unmasked = tok.decode([t for t, b in zip(ids, mask) if not b])
    for m in CONVERSATION:
        if m["role"] != "assistant":
            assert m["content"] in unmasked
    for r in replies:
        assert r not in unmasked


def test_single_turn_first_message_assistant_and_whitespace(template_and_tokenizer):
    name, tok = template_and_tokenizer
    eot = END_OF_TURN[name]
    ids, mask = tokenize_conversation(tok, [{"role": "assistant", "content": "Hello there."}])
    assert masked_runs(tok, ids, mask) == ["Hello there." + eot]
    convo = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!  "}]
    ids, mask = tokenize_conversation(tok, convo)
    (run,) = masked_runs(tok, ids, mask)
    assert run.startswith("Hello!") and run.endswith(eot) and run.replace(" ", "") == "Hello!" + eot


def test_conversation_without_assistant_has_no_loss(template_and_tokenizer):
    _, tok = template_and_tokenizer
    ids, mask = tokenize_conversation(tok, CONVERSATION[:2])
    assert ids and sum(mask) == 0


def test_repeated_content_is_attributed_to_the_right_turn(template_and_tokenizer):
    name, tok = template_and_tokenizer
    convo = [
        {"role": "user", "content": "yes"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "yes"},
        {"role": "assistant", "content": "no"},
    ]
    ids, mask = tokenize_conversation(tok, convo)
    assert masked_runs(tok, ids, mask) == ["yes" + END_OF_TURN[name], "no" + END_OF_TURN[name]]


def test_plain_text_and_truncation(template_and_tokenizer):
    name, tok = template_and_tokenizer
    text = "The quick brown fox jumps over the lazy dog."
    row = tokenize_row(tok, PlainText(text), max_seq_length=10_000)
    assert row.loss_mask == [1] * len(row.input_ids) and not row.truncated
    assert tok.decode(row.input_ids, skip_special_tokens=True) == text
    assert (row.input_ids[0] == tok.bos_token_id) == (name == "llama3")  # Llama-3 prepends BOS
    short = tokenize_row(tok, Conversation(CONVERSATION), max_seq_length=7)
    full = tokenize_row(tok, Conversation(CONVERSATION), max_seq_length=10_000)
    assert short.truncated and short.input_ids == full.input_ids[:7] and short.loss_mask == full.loss_mask[:7]
    with pytest.raises(DataError, match="empty after tokenization"):
        tokenize_row(tok, PlainText(""), max_seq_length=16)


def test_template_that_rewrites_content_is_reported(tiny_target):
    tok = AutoTokenizer.from_pretrained(tiny_target(chat_template="chatml"), local_files_only=True)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}"
    with pytest.raises(DataError, match="content was not found"):
        tokenize_conversation(tok, CONVERSATION)
