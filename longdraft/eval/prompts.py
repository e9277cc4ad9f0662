"""Evaluation prompts from a data path (any kind of ``data/sources.py``).

Conversation rows: the messages before the first assistant turn, rendered with the chat template and
``add_generation_prompt=True`` (a row without an assistant turn uses all its messages). Text rows: the
first half of the tokens, at most ``max_text_prompt_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longdraft.data import errors as E
from longdraft.data.errors import DataError
from longdraft.data.rows import Conversation, PlainText
from longdraft.data.sources import iter_rows
from longdraft.data.tokenize import render_chat
from longdraft.eval.errors import EvalInputError


@dataclass(frozen=True)
class Prompt:
    prompt_id: str  # "file:line"
    kind: str  # "chat" | "text"
    input_ids: list[int]


def conversation_prompt(tokenizer: Any, messages: list[dict[str, Any]], tools: list | None = None) -> list[int]:
    first_assistant = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    if first_assistant == 0:
        raise DataError(E.MISSING_FIELD, "conversation starts with an assistant turn: no prompt before it")
    text = render_chat(tokenizer, messages[:first_assistant], add_generation_prompt=True, tools=tools)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template wrote any BOS


def text_prompt(tokenizer: Any, text: str, max_text_prompt_tokens: int) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if len(ids) < 2:
        raise DataError(E.EMPTY_AFTER_TOKENIZATION, f"text row has {len(ids)} tokens; a prompt needs at least 2")
    return ids[: max(1, min(len(ids) // 2, max_text_prompt_tokens))]


def load_prompts(path: str | Path, tokenizer: Any, num_prompts: int, max_text_prompt_tokens: int = 128) -> list[Prompt]:
    """The first ``num_prompts`` prompts of a data path; a bad row raises ``DataError`` naming file:line."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts={num_prompts}: expected >= 1")
    prompts: list[Prompt] = []
    for location, row in iter_rows(path):
        if len(prompts) >= num_prompts:
            break
        try:
            if isinstance(row, DataError):
                raise row
            if isinstance(row, Conversation):
                prompts.append(Prompt(location, "chat", conversation_prompt(tokenizer, row.messages, row.tools)))
            elif isinstance(row, PlainText):
                prompts.append(Prompt(location, "text", text_prompt(tokenizer, row.text, max_text_prompt_tokens)))
        except DataError as e:
            raise (e if e.location else e.at(location)) from None
    if not prompts:
        raise EvalInputError(f"{path}: no prompts (the file has no rows)")
    return prompts
