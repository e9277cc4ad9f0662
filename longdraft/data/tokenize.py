"""Tokenising rows with the tokenizer's chat template and an assistant-only loss mask.

The mask is found from character spans of ONE rendering of the whole conversation, not from token
patterns. The spans come, in this order of preference, from
- the template's own ``{% generation %}`` markers, where it has them;
- `turn_shape.py`: the rendering walked message by message, for templates that render each message
  the same wherever it stands (one render);
- `turn_spans.py`: each assistant turn found inside the rendering, for templates that render a turn
  differently by what follows it (Qwen3 reasoning, gpt-oss channels; two renders), and for turns with
  reasoning or tool calls (the reference would start them at their content); a template without a
  generation prompt tries the reference first, since only it tells an assistant header from the answer;
- the reference algorithm below (prefix renders), which also names what is wrong when nothing fits:

1. For each assistant message i, render messages[:i] with the generation prompt (`gen`) and
   messages[:i+1] (`full_i`). The assistant content is searched in `full_i` after `gen`.
2. The loss span runs from the start of the (stripped) content to the end of `full_i` with
   trailing whitespace removed, i.e. the content **plus the template's end-of-turn token**
   (`<|im_end|>`, `<|eot_id|>`, `</s>` ...), but not the newline some templates put after it.
3. The whole conversation is tokenised once with offsets; a token is in the loss when its
   character range overlaps a loss span.

Plain-text rows: every token carries loss.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from longdraft.data import errors as E
from longdraft.data.errors import DataError
from longdraft.data.messages import template_view
from longdraft.data.rows import Conversation, PlainText, Row
from longdraft.data.turn_shape import spans_from_one_render, turn_shape_for
from longdraft.data.turn_spans import has_structure, spans_in_full_render, turn_ends_for

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class TokenizedRow:
    input_ids: list[int]
    loss_mask: list[int]
    truncated: bool


def render_chat(
    tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False, tools: list | None = None
) -> str:
    try:
        text = tokenizer.apply_chat_template(
            template_view(messages), tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # jinja errors, raise_exception() in templates, missing template
        raise DataError(E.TEMPLATE_MISMATCH, f"chat template failed: {type(e).__name__}: {e}") from e
    if not isinstance(text, str):
        raise DataError(E.TEMPLATE_MISMATCH, f"chat template returned {type(text).__name__}, expected a string")
    return text


def _render_prefix(
    tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool, tools: list | None
) -> str:
    if not messages and not add_generation_prompt:
        return ""
    try:
        return render_chat(tokenizer, messages, add_generation_prompt, tools)
    except DataError:
        if messages:
            raise
        return ""  # some templates refuse an empty conversation; nothing precedes message 0 then


def _generation_spans(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list | None
) -> tuple[str, list[tuple[int, int]]] | None:
    """The rendering and its ``{% generation %}`` spans, for a template that marks them; else None."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not _GENERATION.search(template):
        return None
    from transformers.utils.chat_template_utils import render_jinja_template  # what apply_chat_template calls

    try:
        texts, indices = render_jinja_template(
            [template_view(messages)],
            tools=tools,
            chat_template=template,
            return_assistant_tokens_mask=True,
            **tokenizer.special_tokens_map,
        )
    except Exception as e:
        raise DataError(E.TEMPLATE_MISMATCH, f"chat template failed: {type(e).__name__}: {e}") from e
    return texts[0], [(a, b) for a, b in indices[0] if b > a]


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` once; return the text and the [start, end) character spans that carry loss
    (the module's docstring says from where)."""
    marked = _generation_spans(tokenizer, messages, tools)
    if marked is not None:
        return marked
    text = render_chat(tokenizer, messages, tools=tools)

    def render(m: list[dict[str, Any]], gen: bool) -> str:  # the template's shape is learned without tools
        return render_chat(tokenizer, m, gen)

    def render_row(m: list[dict[str, Any]], gen: bool) -> str:
        return render_chat(tokenizer, m, gen, tools)

    shape = turn_shape_for(tokenizer, render)
    spans = spans_from_one_render(shape, text, messages) if shape is not None else None
    if spans is not None:
        return text, spans
    ends = turn_ends_for(tokenizer, render)
    if ends.has_prompt or has_structure(messages):
        # What the model writes after the generation prompt, reasoning, tool calls and channel headers
        # included (the reference starts each turn at its content)
        spans = spans_in_full_render(ends, render_row, text, messages)
        return text, spans if spans is not None else spans_by_prefix_renders(tokenizer, messages, text, tools)
    try:  # no generation prompt: only the reference tells an assistant header from the answer
        return text, spans_by_prefix_renders(tokenizer, messages, text, tools)
    except DataError as e:  # not prefix-stable (a system prompt moved into the last turn...)
        spans = spans_in_full_render(ends, render_row, text, messages)
        if spans is None:
            raise e from None
        return text, spans


def spans_by_prefix_renders(
    tokenizer: Any, messages: list[dict[str, Any]], text: str, tools: list | None = None
) -> list[tuple[int, int]]:
    """The reference: 2-3 renders of the prefix per assistant turn (see the module's docstring)."""
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        full = render_chat(tokenizer, messages[: i + 1], tools=tools)
        if not text.startswith(full):
            raise DataError(
                E.TEMPLATE_MISMATCH,
                f"chat template is not prefix-stable: the rendering up to "
                f"message {i} is not a prefix of the whole conversation",
            )
        gen = _render_prefix(tokenizer, messages[:i], True, tools)
        if not full.startswith(gen):
            gen = _render_prefix(tokenizer, messages[:i], False, tools)
            if not full.startswith(gen):
                raise DataError(E.TEMPLATE_MISMATCH, f"chat template is not prefix-stable at message {i}")
        content = msg["content"].strip()
        start = full.find(content, len(gen))
        if start < 0:
            raise DataError(
                E.TEMPLATE_MISMATCH,
                f"assistant message {i} content was not found in the "
                "rendered chat template (does the template rewrite it?)",
            )
        end = len(full.rstrip())
        if end > start:
            spans.append((start, end))
    return spans


def mask_from_offsets(offsets: Sequence[Sequence[int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """1 where a token's (non-empty) character range overlaps a loss span; spans in order.

    Vectorised: token t is compared with the first span ending after the start of any token up to t
    (a running maximum, as a scan that only moves forward), so no per-token Python loop runs."""
    # fromiter over the flattened pairs: several times faster than np.asarray on a list of tuples
    offs = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets)).reshape(-1, 2)
    if not spans or not len(offs):
        return np.zeros(len(offs), dtype=np.int64)
    starts = np.asarray([a for a, _ in spans], dtype=np.int64)
    ends = np.asarray([b for _, b in spans], dtype=np.int64)
    s, e = offs[:, 0], offs[:, 1]
    j = np.maximum.accumulate(np.searchsorted(ends, s, side="right"))
    inside = j < len(spans)
    jj = np.minimum(j, len(spans) - 1)
    return (inside & (s < ends[jj]) & (e > starts[jj]) & (e > s)).astype(np.int64)


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list | None = None
) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("assistant loss masks need a fast tokenizer (offset mapping)")
    text, spans = assistant_spans(tokenizer, messages, tools)
    # The template already wrote BOS (if any); do not add special tokens again. verbose=False: rows
    # are cut to max_seq_length afterwards, so "longer than the maximum" would be a false alarm.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return list(enc["input_ids"]), mask_from_offsets(enc["offset_mapping"], spans).tolist()


def tokenize_text(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    if not text.strip():  # would be nothing (or a lone BOS) after tokenization
        raise DataError(E.EMPTY_AFTER_TOKENIZATION, "text row is empty after tokenization")
    ids = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])  # cut to length afterwards
    return ids, [1] * len(ids)


def tokenize_row(tokenizer: Any, row: Row, max_seq_length: int) -> TokenizedRow:
    """Tokenise one row and truncate it to `max_seq_length` tokens."""
    if isinstance(row, Conversation):
        ids, mask = tokenize_conversation(tokenizer, row.messages, row.tools)
    elif isinstance(row, PlainText):
        ids, mask = tokenize_text(tokenizer, row.text)
    else:
        raise TypeError(f"unknown row type {type(row).__name__}")
    if not ids:
        raise DataError(E.EMPTY_AFTER_TOKENIZATION, "row is empty after tokenization")
    truncated = len(ids) > max_seq_length
    return TokenizedRow(ids[:max_seq_length], mask[:max_seq_length], truncated)
