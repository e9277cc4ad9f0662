"""Reading JSONL rows into conversations or plain texts.

Accepted rows (one JSON object per line; blank lines are ignored):
- `{"conversations": [{"role": ..., "content": ...}, ...]}` (also under the key "messages"), optionally
  with `"tools": [...]`, the tool definitions the chat template writes into the prompt,
- ShareGPT: `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}`,
- `{"text": "..."}`.
Messages are normalised by `messages.py` (roles, reasoning, tool calls, text parts; images refused).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longdraft.data import errors as E
from longdraft.data.errors import DataError
from longdraft.data.messages import normalise_message


@dataclass(frozen=True)
class Conversation:
    messages: list[dict[str, Any]]  # [{"role": system|user|assistant|tool, "content": str, ...}] (messages.py)
    tools: list[dict[str, Any]] | None = None  # the row's tool definitions, which templates write into the prompt


@dataclass(frozen=True)
class PlainText:
    text: str


Row = Conversation | PlainText


def _tools(tools: object) -> list[dict[str, Any]] | None:
    """A row's `tools`: a list of definitions (OpenAI shape), or a JSON string of one, as some data sets store it."""
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise DataError(E.BAD_FIELD_TYPE, f"'tools' is a string but not JSON ({e.msg})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError(E.BAD_FIELD_TYPE, f"'tools' is {type(tools).__name__}, expected a list of tool definitions")
    return tools or None


def parse_row(obj: object) -> Row:
    """Turn one decoded JSON value into a Row, raising DataError (without location)."""
    if not isinstance(obj, dict):
        raise DataError(E.NOT_AN_OBJECT, f"row is {type(obj).__name__}, expected a JSON object")
    for key in ("conversations", "messages"):
        if key in obj:
            messages = obj[key]
            if not isinstance(messages, list):
                raise DataError(E.BAD_FIELD_TYPE, f"'{key}' is {type(messages).__name__}, expected a list")
            if not messages:
                raise DataError(E.EMPTY_CONVERSATION, f"'{key}' is an empty list")
            return Conversation([normalise_message(i, m) for i, m in enumerate(messages)], _tools(obj.get("tools")))
    if "text" in obj:
        text = obj["text"]
        if not isinstance(text, str):
            raise DataError(E.BAD_FIELD_TYPE, f"'text' is {type(text).__name__}, expected a string")
        return PlainText(text)
    raise DataError(
        E.MISSING_FIELD, f"row has none of the fields 'conversations', 'messages', 'text' (keys: {sorted(obj)})"
    )


def parse_line(location: str, line: str) -> Row | DataError:
    """One JSONL line as a Row, or the DataError that says what is wrong with it (never raises)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return DataError(E.BAD_JSON, f"invalid JSON ({e.msg} at column {e.colno})", location)
    try:
        return parse_row(obj)
    except DataError as e:
        return e.at(location)


def iter_lines(path: str | Path) -> Iterator[tuple[str, str]]:
    """Yield ("file:line", text) for each non-blank line."""
    p = Path(path)
    with p.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield f"{p}:{lineno}", line


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Row | DataError]]:
    """Yield ("file:line", Row) for each non-blank line, or ("file:line", DataError) for a bad one."""
    for location, line in iter_lines(path):
        yield location, parse_line(location, line)
