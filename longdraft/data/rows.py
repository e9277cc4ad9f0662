"""Reading JSONL rows into conversations or plain texts.

Accepted rows (one JSON object per line; blank lines are ignored):
- `{"conversations": [{"role": ..., "content": ...}, ...]}` (also under the key "messages"),
- ShareGPT: `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}`,
- `{"text": "..."}`.
Roles are normalised to system / user / assistant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from longdraft.data import errors as E
from longdraft.data.errors import DataError

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
}


@dataclass(frozen=True)
class Conversation:
    messages: list[dict[str, str]]  # [{"role": system|user|assistant, "content": str}]


@dataclass(frozen=True)
class PlainText:
    text: str


Row = Conversation | PlainText


def _normalise_message(i: int, msg: object) -> dict[str, str]:
    if not isinstance(msg, dict):
        raise DataError(E.BAD_FIELD_TYPE, f"message {i} is {type(msg).__name__}, expected an object")
    if "role" in msg or "content" in msg:
        role_key, content_key = "role", "content"
    elif "from" in msg or "value" in msg:
        role_key, content_key = "from", "value"
    else:
        raise DataError(E.MISSING_FIELD, f"message {i} has neither 'role'/'content' nor ShareGPT 'from'/'value'")
    for key in (role_key, content_key):
        if key not in msg:
            raise DataError(E.MISSING_FIELD, f"message {i} is missing the field '{key}'")
    role, content = msg[role_key], msg[content_key]
    if not isinstance(role, str):
        raise DataError(E.BAD_FIELD_TYPE, f"message {i} field '{role_key}' is {role!r}, expected a string")
    if not isinstance(content, str):
        raise DataError(
            E.BAD_FIELD_TYPE, f"message {i} field '{content_key}' is {type(content).__name__}, expected a string"
        )
    normal = ROLE_ALIASES.get(role.strip().lower())
    if normal is None:
        raise DataError(
            E.UNKNOWN_ROLE, f"message {i} has unknown role {role!r}; expected one of {sorted(ROLE_ALIASES)}"
        )
    return {"role": normal, "content": content}


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
            return Conversation([_normalise_message(i, m) for i, m in enumerate(messages)])
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
