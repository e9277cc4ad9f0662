"""Assistant masks from one rendering per conversation, equal to the prefix-render reference."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from longdraft.data.errors import DataError
from longdraft.data.tokenize import assistant_spans, spans_by_prefix_renders, tokenize_conversation
from longdraft.testing.tiny_target import build_tiny_target

# Beyond the tiny target's own two: no footer at all, and trimmed contents with a footer line.
PLAIN = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
TRIMMED = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>\n{{ m['content'] | trim }}\n</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>\n{% endif %}"
)
# Drops the reasoning of all but the last assistant message, as Qwen3's template does: not prefix-stable.
THINKING = (
    "{% for m in messages %}<{{ m['role'] }}>{% if m['role'] == 'assistant' and not loop.last %}"
    "{{ m['content'].split('</think>')[-1] }}{% else %}{{ m['content'] }}{% endif %}<end>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module", params=["chatml", "llama3", "plain", "trimmed"])
def tokenizer(request, tmp_path_factory):
    base = "llama3" if request.param == "llama3" else "chatml"
    tok = AutoTokenizer.from_pretrained(build_tiny_target(tmp_path_factory.mktemp(base), chat_template=base))
    tok.chat_template = {"plain": PLAIN, "trimmed": TRIMMED}.get(request.param, tok.chat_template)
    return request.param, tok


def random_conversation(rng: random.Random) -> list[dict[str, str]]:
    words = ["assistant", "user", "yes", "no", " padded ", "x\n", "the end", "<end>", "system", "  "]
    messages = [{"role": "system", "content": rng.choice(words)}] if rng.random() < 0.5 else []
    first = "assistant" if not messages and rng.random() < 0.2 else "user"
    for t in range(rng.randint(1, 6)):
        for role in ["assistant"] if first == "assistant" and t == 0 else ["user", "assistant"]:
            content = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
            messages.append({"role": role, "content": content})
    return messages[:-1] if rng.random() < 0.2 else messages


def test_random_conversations_give_the_reference_spans(tokenizer):
    _, tokenizer = tokenizer
    rng = random.Random(0)
    for _ in range(150):
        messages = random_conversation(rng)
        text, spans = assistant_spans(tokenizer, messages)
        assert spans == spans_by_prefix_renders(tokenizer, messages, text), messages


def test_a_multi_turn_conversation_is_rendered_once(tokenizer, monkeypatch):
    name, tokenizer = tokenizer
    conversation = random_conversation(random.Random(1))
    tokenize_conversation(tokenizer, conversation)  # learns the template's turn shape, once per tokenizer
    calls = []
    render = tokenizer.apply_chat_template
    monkeypatch.setattr(tokenizer, "apply_chat_template", lambda *a, **k: calls.append(1) or render(*a, **k))
    messages = [{"role": "system", "content": "Be brief."}]
    for t in range(8):
        messages += [{"role": "user", "content": f"question {t}"}, {"role": "assistant", "content": f"answer {t}"}]
    ids, mask = tokenize_conversation(tokenizer, messages)
    # Without a generation prompt the reference searches assistant contents from the turn's start
    # (inside its "assistant: " header), which one rendering cannot reproduce: it keeps the prefix renders.
    assert len(calls) == (1 if name != "plain" else 1 + 2 * 8)
    monkeypatch.setattr(tokenizer, "apply_chat_template", render)
    text, _ = assistant_spans(tokenizer, messages)
    assert (
        sum(mask) > 0 and spans_by_prefix_renders(tokenizer, messages, text) == assistant_spans(tokenizer, messages)[1]
    )


def test_a_template_that_drops_reasoning_trains_on_what_it_emits(tiny_target):
    """A template that drops earlier reasoning is not prefix-stable; such conversations were
    refused. The loss now covers exactly what it writes for each assistant turn in the whole rendering."""
    tok = AutoTokenizer.from_pretrained(tiny_target(chat_template="chatml"), local_files_only=True)
    tok.chat_template = THINKING
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert assistant_spans(tok, plain)[1]  # its shape is learned: it renders message by message
    thinking = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>hmm</think>hello"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "<think>so</think>bye"},
    ]
    with pytest.raises(DataError, match="not prefix-stable"):
        spans_by_prefix_renders(tok, thinking, assistant_spans(tok, thinking)[0])
    text, spans = assistant_spans(tok, thinking)
    assert text == "<user>hi<end>\n<assistant>hello<end>\n<user>again<end>\n<assistant><think>so</think>bye<end>\n"
    assert [text[a:b] for a, b in spans] == ["hello<end>", "<think>so</think>bye<end>"]
