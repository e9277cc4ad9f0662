"""Prompts of an exact context length, cut from long held-out documents.

A document is a row of the eval file: a text row's whole text, or a conversation rendered with the
chat template in full. For context length ``L`` a prompt is the ``L`` tokens that precede a cut
point ``c`` inside a document (``L <= c <= n - tail``: the document goes on for at least ``tail``
tokens after it, so the target continues real text). Cut points are spread evenly over each
document and taken from the documents in turn, so a handful of long documents gives many prompts.
A document that starts with BOS keeps it: the prompt is BOS followed by the ``L - 1`` tokens before
the cut, as the model saw text in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longdraft.data.rows import Conversation, PlainText
from longdraft.data.sources import iter_rows
from longdraft.data.tokenize import render_chat
from longdraft.eval.errors import EvalInputError
from longdraft.eval.prompts import Prompt


def document_ids(path: str | Path, tokenizer: Any) -> list[tuple[str, list[int]]]:
    """(``file:row``, token ids) of every document of a data path; bad rows are skipped."""
    docs = []
    for location, row in iter_rows(path):
        if isinstance(row, PlainText):
            # verbose=False: a whole document is meant to be longer than the model's context
            docs.append((location, list(tokenizer(row.text, add_special_tokens=True, verbose=False)["input_ids"])))
        elif isinstance(row, Conversation):
            text = render_chat(tokenizer, row.messages, add_generation_prompt=False, tools=row.tools)
            docs.append((location, list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])))
    return docs


def cut_points(n: int, length: int, tail: int, count: int) -> list[int]:
    """Up to ``count`` distinct cut points in ``[length, n - tail]``, evenly spread."""
    last = n - tail
    if last < length or count < 1:
        return []
    if count == 1 or last == length:
        return [last]
    step = (last - length) / (count - 1)
    return sorted({length + round(i * step) for i in range(count)})


def context_prompts(
    docs: list[tuple[str, list[int]]], length: int, num_prompts: int, tail: int, bos_id: int | None
) -> list[Prompt]:
    """``num_prompts`` prompts of exactly ``length`` tokens (fewer when the documents have fewer cut
    points); ValueError when no document is long enough."""
    if length < 2:
        raise ValueError(f"context length {length}: expected >= 2 tokens")
    eligible = [(loc, ids) for loc, ids in docs if len(ids) >= length + tail]
    if not eligible:
        longest = max((len(ids) for _, ids in docs), default=0)
        raise EvalInputError(
            f"no document has the {length} + {tail} tokens a context length of {length} needs "
            f"(context + generated tokens; the longest has {longest})"
        )
    per_doc = -(-num_prompts // len(eligible))
    cuts = [[(loc, ids, c) for c in cut_points(len(ids), length, tail, per_doc)] for loc, ids in eligible]
    prompts: list[Prompt] = []
    for round_ in range(per_doc):  # one cut from each document in turn
        for doc_cuts in cuts:
            if round_ < len(doc_cuts) and len(prompts) < num_prompts:
                loc, ids, c = doc_cuts[round_]
                window = ids[c - length : c]
                if bos_id is not None and ids[0] == bos_id and window[0] != bos_id:
                    window = [bos_id] + window[1:]
                prompts.append(Prompt(f"{loc}@{c}", "context", window))
    return prompts
