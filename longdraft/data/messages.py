"""One chat message of a row, normalised to what chat templates read.

A message becomes ``{"role", "content"}`` plus, where given, ``reasoning_content`` and ``tool_calls``
(assistant), ``name`` and ``tool_call_id`` (tool). Accepted shapes:
- roles system / user / assistant / tool (aliases: ShareGPT's human / gpt, Gemma's model, Llama's ipython);
- ``content`` a string, ``null`` (an assistant turn that only calls tools), or a list of text parts
  ``{"type": "text", "text": ...}`` joined without separator, as the templates that take parts render
  them; image, audio or video parts are refused: longdraft trains text-only drafts;
- ``reasoning_content`` (also ``reasoning`` or ``thinking``) on assistant messages;
- ``tool_calls`` in the OpenAI shape ``[{"type": "function", "function": {"name", "arguments"}}]`` (the
  ``function`` wrapper may be left out); ``arguments`` an object or a JSON string of one, kept as an
  object, since templates write it with ``tojson`` (a string would be quoted twice).
Unknown keys are dropped.
"""

from __future__ import annotations

import json
from typing import Any

from longdraft.data import errors as E
from longdraft.data.errors import DataError

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "tool": "tool",
    "ipython": "tool",
}
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


def _text_of_parts(i: int, parts: list) -> str:
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
            continue
        what = f"has type {kind!r}" if isinstance(kind, str) else f"is {type(part).__name__} {str(part)[:40]!r}"
        raise DataError(
            E.UNSUPPORTED_CONTENT,
            f"message {i} content part {j} {what}: expected text parts {{'type': 'text', 'text': ...}} "
            "(drafts train on text; images, audio and video are not supported)",
        )
    return "".join(texts)


def _content(i: int, key: str, value: object, role: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _text_of_parts(i, value)
    if value is None and role == "assistant":
        return ""
    raise DataError(
        E.BAD_FIELD_TYPE,
        f"message {i} field '{key}' is {type(value).__name__}, expected a string or a list of text parts",
    )


def _tool_call(i: int, j: int, call: object) -> dict[str, Any]:
    where = f"message {i} tool_calls[{j}]"
    if not isinstance(call, dict):
        raise DataError(E.BAD_FIELD_TYPE, f"{where} is {type(call).__name__}, expected an object")
    function = call.get("function", call)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise DataError(E.BAD_FIELD_TYPE, f"{where} has no function name: expected {{'function': {{'name': ...}}}}")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise DataError(E.BAD_FIELD_TYPE, f"{where} arguments are not valid JSON ({e.msg})") from None
    if not isinstance(arguments, dict):
        raise DataError(E.BAD_FIELD_TYPE, f"{where} arguments are {type(arguments).__name__}, expected a JSON object")
    out: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def normalise_message(i: int, msg: object) -> dict[str, Any]:
    if not isinstance(msg, dict):
        raise DataError(E.BAD_FIELD_TYPE, f"message {i} is {type(msg).__name__}, expected an object")
    if "role" in msg or "content" in msg:
        role_key, content_key = "role", "content"
    elif "from" in msg or "value" in msg:
        role_key, content_key = "from", "value"
    else:
        raise DataError(E.MISSING_FIELD, f"message {i} has neither 'role'/'content' nor ShareGPT 'from'/'value'")
    role = msg.get(role_key)
    if role_key not in msg:
        raise DataError(E.MISSING_FIELD, f"message {i} is missing the field '{role_key}'")
    if not isinstance(role, str):
        raise DataError(E.BAD_FIELD_TYPE, f"message {i} field '{role_key}' is {role!r}, expected a string")
    normal = ROLE_ALIASES.get(role.strip().lower())
    if normal is None:
        raise DataError(
            E.UNKNOWN_ROLE, f"message {i} has unknown role {role!r}; expected one of {sorted(ROLE_ALIASES)}"
        )
    calls = msg.get("tool_calls") if normal == "assistant" else None
    if content_key not in msg and not calls:
        raise DataError(E.MISSING_FIELD, f"message {i} is missing the field '{content_key}'")
    out: dict[str, Any] = {"role": normal, "content": _content(i, content_key, msg.get(content_key), normal)}
    if normal == "assistant":
        reasoning = next((msg[k] for k in REASONING_KEYS if msg.get(k) is not None), None)
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise DataError(
                    E.BAD_FIELD_TYPE, f"message {i} reasoning is {type(reasoning).__name__}, expected a string"
                )
            out["reasoning_content"] = reasoning
        if calls is not None:
            if not isinstance(calls, list):
                raise DataError(
                    E.BAD_FIELD_TYPE, f"message {i} 'tool_calls' is {type(calls).__name__}, expected a list"
                )
            if calls:
                out["tool_calls"] = [_tool_call(i, j, c) for j, c in enumerate(calls)]
    if normal == "tool":
        out.update({k: msg[k] for k in ("name", "tool_call_id") if isinstance(msg.get(k), str)})
    return out


def template_view(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as templates read them: the reasoning also under ``thinking`` (gpt-oss's key), since
    templates name it differently; each reads its own key and ignores the other."""
    if not any("reasoning_content" in m for m in messages):
        return messages
    return [{**m, "thinking": m["reasoning_content"]} if "reasoning_content" in m else m for m in messages]
