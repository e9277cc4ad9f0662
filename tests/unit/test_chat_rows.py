"""Modern chat rows: reasoning, the tool role, tool calls, text parts; images refused."""

from __future__ import annotations

import json

import pytest

from longdraft.data import errors as E
from longdraft.data.dataset import load_samples
from longdraft.data.errors import DataError
from longdraft.data.rows import Conversation, parse_row
from longdraft.testing.chat_templates import family_tokenizer


def test_reasoning_tool_calls_tool_role_and_text_parts_are_kept():
    row = parse_row(
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning": "Call the tool.",
                    "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": '{"city": "Paris"}'}}],
                },
                {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "w", "extra": 1},
                {"from": "gpt", "value": "Sunny.", "thinking": "Say it."},
                {"role": "assistant", "content": "x", "tool_calls": [{"name": "f", "arguments": {"a": 1}, "id": "c2"}]},
            ]
        }
    )
    assert row == Conversation(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "Call the tool.",
                "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "sunny", "name": "w", "tool_call_id": "c1"},
            {"role": "assistant", "content": "Sunny.", "reasoning_content": "Say it."},
            {
                "role": "assistant",
                "content": "x",
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}, "id": "c2"}],
            },
        ]
    )


BAD = [
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "part 0 has type 'image_url'"),
    ({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}, "part 1 has type 'image'"),
    ({"role": "user", "content": None}, "expected a string or a list of text parts"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}, "not valid"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}, "list"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}, "no function name"),
    ({"role": "assistant", "content": "", "tool_calls": "f()"}, "expected a list"),
    ({"role": "assistant", "content": "", "reasoning_content": 3}, "reasoning is int"),
]


@pytest.mark.parametrize("message,reason", BAD, ids=[r for _, r in BAD])
def test_bad_messages_are_refused_with_file_line_and_what_was_expected(tmp_path, tiny_target, message, reason):
    good = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    path = tmp_path / "chat.jsonl"
    path.write_text(good + "\n" + json.dumps({"messages": [{"role": "user", "content": "Hi"}, message]}) + "\n")
    tok = family_tokenizer(tiny_target(), "qwen3")
    with pytest.raises(DataError) as e:
        load_samples(path, tok, 256)
    assert str(e.value).startswith(f"{path}:2: message 1 ") and reason in str(e.value)
    assert "\n" not in str(e.value)
    if "image" in reason:
        assert e.value.kind == E.UNSUPPORTED_CONTENT and "images" in str(e.value)
    samples, report = load_samples(path, tok, 256, on_bad_row="skip")
    assert len(samples) == 1 and sum(report.skipped.values()) == 1


def test_every_multi_turn_qwen3_row_trains_in_skip_mode(tmp_path, tiny_target):
    """Before: each multi-turn Qwen3 row was refused as "not prefix-stable", and `on_bad_row: skip`
    dropped them all silently."""
    rows = []
    for i in range(4):
        messages = [{"role": "system", "content": "Be brief."}]
        for t in range(3):
            messages += [
                {"role": "user", "content": f"Question {i}.{t}?"},
                {"role": "assistant", "reasoning_content": f"Think {t}.", "content": f"Answer {t}."},
            ]
        rows.append({"messages": messages})
    path = tmp_path / "qwen3.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples, report = load_samples(path, family_tokenizer(tiny_target(), "qwen3"), 4096, on_bad_row="skip")
    assert report.skipped == {} and len(samples) == 4


def test_tool_definitions_are_a_list_or_its_json_string():
    tools = [{"type": "function", "function": {"name": "f"}}]
    hi = [{"role": "user", "content": "Hi"}]
    assert parse_row({"messages": hi, "tools": tools}).tools == tools
    assert parse_row({"messages": hi, "tools": json.dumps(tools)}).tools == tools
    assert parse_row({"messages": hi, "tools": None}).tools is None
    with pytest.raises(DataError, match="'tools' is dict, expected a list of tool definitions"):
        parse_row({"messages": hi, "tools": {"f": 1}})
    with pytest.raises(DataError, match="'tools' is a string but not JSON"):
        parse_row({"messages": hi, "tools": "f()"})
