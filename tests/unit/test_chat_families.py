"""Loss masks of multi-turn conversations with reasoning and tool calls, under templates that follow the
rendering rules of Qwen3, Llama-3.1, gpt-oss, Mistral and Gemma-3.

The expected masked texts are written out by hand from each family's rules: exactly what the template
emits for each assistant turn, after its generation prompt and up to its end-of-turn token, nothing else.
"""

from __future__ import annotations

import json

import pytest

from longdraft.data.errors import DataError
from longdraft.data.rows import parse_row
from longdraft.data.tokenize import assistant_spans, render_chat, tokenize_conversation
from longdraft.testing.chat_templates import family_tokenizer

CALL = [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}, "id": "call00001"}]
# Two questions, reasoning on every answer, a tool call and its result: the tool loop ends the conversation.
TOOL_LOOP = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {
        "role": "assistant",
        "reasoning_content": "The user asks about France.",
        "content": "The capital of France is Paris.",
    },
    {"role": "user", "content": "What is the weather there?"},
    {"role": "assistant", "reasoning_content": "I should call the weather tool.", "content": None, "tool_calls": CALL},
    {"role": "tool", "content": "sunny, 22 C", "tool_call_id": "call00001"},
    {
        "role": "assistant",
        "reasoning_content": "The tool says sunny.",
        "content": "It is sunny and 22 degrees in Paris.",
    },
]
# The same, then one more question answered without reasoning.
FOLLOW_UP = TOOL_LOOP + [{"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You are welcome."}]

JSON_CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
EXPECTED = {
    ("qwen3", "tool_loop"): [
        # before the last user query: reasoning dropped
        "The capital of France is Paris.<|im_end|>",
        # after it: reasoning shown
        f"<think>\nI should call the weather tool.\n</think>\n\n<tool_call>\n{JSON_CALL}\n</tool_call><|im_end|>",
        "<think>\nThe tool says sunny.\n</think>\n\nIt is sunny and 22 degrees in Paris.<|im_end|>",
    ],
    ("qwen3", "follow_up"): [
        "The capital of France is Paris.<|im_end|>",
        f"<tool_call>\n{JSON_CALL}\n</tool_call><|im_end|>",
        "It is sunny and 22 degrees in Paris.<|im_end|>",
        "<think>\n\n</think>\n\nYou are welcome.<|im_end|>",  # the last turn's empty think block
    ],
    ("llama3.1", "tool_loop"): [  # no reasoning in Llama's template; a tool call is the turn's only text
        "The capital of France is Paris.<|eot_id|>",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        "It is sunny and 22 degrees in Paris.<|eot_id|>",
    ],
    ("gpt-oss", "tool_loop"): [
        "<|channel|>final<|message|>The capital of France is Paris.<|end|>",
        # a later answer follows: the tool call's analysis is dropped
        ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
        "<|channel|>analysis<|message|>The tool says sunny.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>It is sunny and 22 degrees in Paris.<|return|>",
    ],
    ("gpt-oss", "follow_up"): [
        "<|channel|>final<|message|>The capital of France is Paris.<|end|>",
        ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
        "<|channel|>final<|message|>It is sunny and 22 degrees in Paris.<|end|>",  # no longer the last: <|end|>
        "<|channel|>final<|message|>You are welcome.<|return|>",
    ],
    ("mistral", "follow_up"): [  # the system prompt moves to the last user turn: earlier turns change
        "The capital of France is Paris.</s>",
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call00001"}]</s>',
        "It is sunny and 22 degrees in Paris.</s>",
        "You are welcome.</s>",
    ],
}
CONVERSATIONS = {"tool_loop": TOOL_LOOP, "follow_up": FOLLOW_UP}


@pytest.fixture(scope="module")
def tokenizers(tiny_target):
    return lambda family: family_tokenizer(tiny_target(), family)


def masked_runs(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    runs, current = [], []
    for token, bit in zip([*ids, None], [*mask, 0]):
        if bit:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current, clean_up_tokenization_spaces=False))
            current = []
    return runs


def check(tokenizer, conversation, expected: list[str]) -> None:
    messages = parse_row({"messages": conversation}).messages
    ids, mask = tokenize_conversation(tokenizer, messages)
    rendered = render_chat(tokenizer, messages)
    assert ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]  # the one rendering, tokenised
    assert masked_runs(tokenizer, ids, mask) == expected
    # Nothing else: the unmasked tokens are the rendering without exactly those parts.
    unmasked = tokenizer.decode([t for t, b in zip(ids, mask) if not b], clean_up_tokenization_spaces=False)
    rest = rendered
    for part in expected:
        rest = rest.replace(part.lstrip(), "", 1)
    assert unmasked.replace(" ", "") == rest.replace(" ", "")


@pytest.mark.parametrize("family,name", sorted(EXPECTED), ids=[f"{f}-{n}" for f, n in sorted(EXPECTED)])
def test_masks_are_exactly_the_assistant_tokens_the_template_emits(tokenizers, family, name):
    check(tokenizers(family), CONVERSATIONS[name], EXPECTED[(family, name)])


def test_qwen3_multi_turn_thinking_conversation_was_refused_before_and_now_trains(tokenizers):
    """The issue's "done when": the multi-turn Qwen3 conversation is not prefix-stable (the last turn's
    empty think block and the reasoning after the last query disappear once the conversation goes on)."""
    from longdraft.data.tokenize import spans_by_prefix_renders

    tok = tokenizers("qwen3")
    messages = parse_row({"messages": FOLLOW_UP}).messages
    text, _ = assistant_spans(tok, messages)
    with pytest.raises(DataError, match="not prefix-stable"):
        spans_by_prefix_renders(tok, messages, text)  # what tokenize.py did before: the row was refused
    ids, mask = tokenize_conversation(tok, messages)
    assert masked_runs(tok, ids, mask) == EXPECTED[("qwen3", "follow_up")]


def test_gpt_oss_shows_the_analysis_of_a_tool_call_no_answer_follows(tokenizers):
    conversation = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "reasoning_content": "Call the tool.", "content": "", "tool_calls": CALL},
        {"role": "tool", "content": "sunny"},
    ]
    expected = [
        "<|channel|>analysis<|message|>Call the tool.<|end|><|start|>assistant"
        ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
    ]
    check(tokenizers("gpt-oss"), conversation, expected)


def test_gemma3_folds_the_system_prompt_and_ignores_reasoning(tokenizers):
    conversation = [m for m in FOLLOW_UP if m["role"] != "tool" and "tool_calls" not in m]
    expected = [
        "The capital of France is Paris.<end_of_turn>",
        "It is sunny and 22 degrees in Paris.<end_of_turn>",
        "You are welcome.<end_of_turn>",
    ]
    check(tokenizers("gemma3"), conversation, expected)
    assert (
        tokenizers("gemma3")
        .apply_chat_template(conversation[:2], tokenize=False)
        .startswith(
            "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nWhat is the capital of France?<end_of_turn>"
        )
    )


def test_llama31_drops_reasoning_and_writes_tool_results_as_ipython(tokenizers):
    tok = tokenizers("llama3.1")
    check(tok, FOLLOW_UP, EXPECTED[("llama3.1", "tool_loop")] + ["You are welcome.<|eot_id|>"])
    rendered = tok.apply_chat_template(parse_row({"messages": TOOL_LOOP}).messages, tokenize=False)
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"sunny, 22 C"<|eot_id|>' in rendered
    assert "France." not in rendered.split("Paris.")[0]  # the reasoning is nowhere


def test_a_template_with_generation_markers_is_taken_at_its_word(tiny_target):
    """`{% generation %}` spans are used as they are (here: the content only, without <|im_end|>)."""
    tok = family_tokenizer(tiny_target(), "qwen3")
    tok.chat_template = (
        "{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\\n' -}}"
        "{%- if m.role == 'assistant' -%}{%- generation -%}{{- m.content -}}{%- endgeneration -%}"
        "{%- else -%}{{- m.content -}}{%- endif -%}{{- '<|im_end|>\\n' -}}{%- endfor -%}"
    )
    ids, mask = tokenize_conversation(tok, FOLLOW_UP[:3] + FOLLOW_UP[-2:])
    assert masked_runs(tok, ids, mask) == ["The capital of France is Paris.", "You are welcome."]


def test_a_rows_tool_definitions_are_written_into_the_prompt_and_carry_no_loss(tokenizers):
    tok = tokenizers("qwen3")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    row = parse_row({"messages": FOLLOW_UP, "tools": json.dumps(tools)})  # as some data sets store them
    assert row.tools == tools
    ids, mask = tokenize_conversation(tok, row.messages, row.tools)
    rendered = render_chat(tok, row.messages, tools=row.tools)
    assert rendered.startswith(
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n<tools>\n" + json.dumps(tools[0])
    )
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert masked_runs(tok, ids, mask) == EXPECTED[("qwen3", "follow_up")]


def test_a_turn_after_a_role_not_probed_takes_its_start_from_its_own_prefix(tokenizers):
    """No probe learns what follows a system prompt: the turn's own prefix render says where it starts.
    Qwen3 with no user query shows no reasoning (no turn comes after the last query)."""
    conversation = [
        {"role": "system", "content": "Greet."},
        {"role": "assistant", "reasoning_content": "Be kind.", "content": "Hello!"},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "reasoning_content": "Short.", "content": "Bye."},
    ]
    check(tokenizers("qwen3"), conversation, ["Hello!<|im_end|>", "<think>\nShort.\n</think>\n\nBye.<|im_end|>"])


def test_qwen3_reasoning_written_inline_in_the_content_is_read_as_the_template_reads_it(tokenizers):
    """Data that keeps the reasoning inside the content (<think>...</think> first): Qwen3's template
    splits it off itself, and drops it for turns before the last query; the masks are the same."""
    inline = [
        {k: v for k, v in m.items() if k != "reasoning_content"}
        | (
            {"content": f"<think>\n{m['reasoning_content']}\n</think>\n\n{m['content'] or ''}"}
            if "reasoning_content" in m
            else {}
        )
        for m in TOOL_LOOP
    ]
    assert "reasoning_content" not in parse_row({"messages": inline}).messages[2]
    check(tokenizers("qwen3"), inline, EXPECTED[("qwen3", "tool_loop")])
