"""Assistant loss spans found inside the rendering of the whole conversation.

Some templates render a turn differently depending on what follows it: Qwen3 shows an assistant's
reasoning only after the last user query and writes an empty ``<think>`` block in the last turn only;
gpt-oss drops earlier analysis and ends only the last answer with ``<|return|>``; Mistral folds the
system prompt into the last user turn. Prefix renders then differ from the whole conversation's, so
the loss must be found in the whole rendering itself: the tokens the template emits for each
assistant turn there, reasoning and tool calls included, nothing else.

How: the conversation is rendered a second time with two marker characters (Unicode private use)
around every non-assistant content. Removing the markers must give the first rendering back exactly
(else the template reads its contents, or the conversation holds such characters itself, and the
caller falls back); the markers then say where every user, tool and system content starts and ends.
An assistant turn's span
- starts after the text the template writes between the preceding content and the assistant's
  first generated character: that message's footer plus the generation prompt (the ``tail``, learned
  once per role from a probe rendered with ``add_generation_prompt``, else from this turn's prefix),
  so what the model writes before the content is in: reasoning, Qwen3's empty think block, harmony's
  channel headers;
- ends at the end of the last end-of-turn marker (``ends``: ``<|im_end|>``, ``<|eot_id|>``,
  ``<|end|>``/``<|return|>``/``<|call|>``, ``</s>``, ``<end_of_turn>`` ...) before the next content, so
  the next message's header is excluded; ``ends`` is learned once per template from probes: the first
  special token after an assistant's content or tool call, and the footer a last and a middle turn share.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Render = Callable[[list[dict[str, Any]], bool], str]

_BASE, _LAST = 0xF0000, 0xFFFFD  # supplementary private use area A: never written by templates
_MARK = re.compile("[\U000f0000-\U000ffffd]")
_CALL = [{"type": "function", "function": {"name": "ldprobefn", "arguments": {"ldprobekey": "ldprobeval"}}}]


@dataclass(frozen=True)
class TurnEnds:
    tails: dict[str, str]  # role before an assistant turn -> its footer + the generation prompt (left-stripped)
    ends: tuple[str, ...]  # the strings that end an assistant turn
    has_prompt: bool  # whether add_generation_prompt writes anything (else the reference reads turns better)


def _after(render: Render, messages: list[dict[str, Any]], gen: bool, anchor: str) -> str | None:
    try:
        text = render(messages, gen)
    except Exception:  # a template that refuses the probe (no tool role, strict alternation): not learned
        return None
    at = text.rfind(anchor)
    return None if at < 0 else text[at + len(anchor) :]


def _tokens(tokenizer: Any, text: str) -> list[tuple[str, bool]]:
    """(token text, is special) of each token of `text`."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
    }
    return [(text[a:b], i in special) for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]


def _first_special(tokens: list[tuple[str, bool]]) -> str | None:
    return next((t for t, special in tokens if special), None)


def learn_turn_ends(tokenizer: Any, render: Render) -> TurnEnds:
    """A few probe renders of placeholder conversations (once per template); see the module's docstring."""
    u = {"role": "user", "content": "ldprobeuser"}
    a = {"role": "assistant", "content": "ldprobeanswer"}
    call = {"role": "assistant", "content": "", "tool_calls": _CALL}
    tool = {"role": "tool", "content": "ldprobetool", "name": "ldprobefn"}
    tails = {}
    prompt = _after(render, [u], True, "ldprobeuser") != _after(render, [u], False, "ldprobeuser")
    for role, probe, anchor in (("user", [u], "ldprobeuser"), ("tool", [u, call, tool], "ldprobetool")):
        tail = _after(render, probe, True, anchor)
        if tail is not None:
            tails[role] = tail.lstrip()
    ends: set[str] = set()
    last = _after(render, [u, a], False, "ldprobeanswer")
    middle = _after(render, [u, a, {"role": "user", "content": "ldprobeagain"}], False, "ldprobeanswer")
    for after in (last, middle, *(_after(render, p, False, "ldprobeval") for p in ([u, call], [u, call, tool]))):
        if after is not None and (special := _first_special(_tokens(tokenizer, after))) is not None:
            ends.add(special)
    if last is not None and middle is not None:  # a footer of plain text: the tokens both turns end with
        shared = []
        for x, y in zip(_tokens(tokenizer, last), _tokens(tokenizer, middle)):
            if x != y:
                break
            shared.append(x[0])
        if "".join(shared).strip():
            ends.add("".join(shared).strip())
    return TurnEnds(tails, tuple(sorted(ends)), prompt)


_LEARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (template, TurnEnds)


def turn_ends_for(tokenizer: Any, render: Render) -> TurnEnds:
    """The tokenizer's TurnEnds, learned at its first such conversation (again if its template changes)."""
    template = repr(getattr(tokenizer, "chat_template", None))
    try:
        cached = _LEARNED.get(tokenizer)
    except TypeError:  # not weak-referenceable: learn every time (still correct)
        return learn_turn_ends(tokenizer, render)
    if cached is None or cached[0] != template:
        cached = (template, learn_turn_ends(tokenizer, render))
        _LEARNED[tokenizer] = cached
    return cached[1]


def _structured(message: dict[str, Any]) -> bool:
    return "reasoning_content" in message or "tool_calls" in message


def has_structure(messages: list[dict[str, Any]]) -> bool:
    """Whether an assistant message carries reasoning or tool calls (written around its content)."""
    return any(_structured(m) for m in messages if m["role"] == "assistant")


def _marked(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each non-assistant content wrapped in markers 2k and 2k + 1, inside its surrounding whitespace
    (so a template that trims contents trims the same)."""
    out = []
    for k, m in enumerate(messages):
        if m["role"] == "assistant":
            out.append(m)
            continue
        c = m["content"]
        core = c.strip()
        lead = c[: len(c) - len(c.lstrip())]
        out.append(
            {**m, "content": lead + chr(_BASE + 2 * k) + core + chr(_BASE + 2 * k + 1) + c[len(lead) + len(core) :]}
        )
    return out


def _content_bounds(render: Render, text: str, messages: list[dict[str, Any]]) -> dict[int, int] | None:
    """Marker number -> its position in `text`, or None if the markers do not map onto `text`."""
    if 2 * len(messages) > _LAST - _BASE or _MARK.search(text):
        return None
    try:
        marked = render(_marked(messages), False)
    except Exception:
        return None
    found = [(m.start() - n, ord(m.group()) - _BASE) for n, m in enumerate(_MARK.finditer(marked))]
    expected = 2 * sum(m["role"] != "assistant" for m in messages)
    positions = {code: at for at, code in found}
    if len(found) != expected or len(positions) != expected or _MARK.sub("", marked) != text:
        return None
    return positions


def _tail_by_prefix(render: Render, messages: list[dict[str, Any]], i: int) -> str | None:
    """This turn's tail from its own prefix rendered with the generation prompt."""
    after = _after(render, _marked(messages[:i]), True, chr(_BASE + 2 * i - 1))
    return None if after is None else after.lstrip()


def spans_in_full_render(
    ends: TurnEnds, render: Render, text: str, messages: list[dict[str, Any]]
) -> list[tuple[int, int]] | None:
    """The [start, end) character spans of the assistant turns in `text` (the whole conversation
    rendered), or None where the conversation's layout cannot be read this way."""
    bounds = _content_bounds(render, text, messages)
    if bounds is None:
        return None
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        if i == 0 or messages[i - 1]["role"] == "assistant":
            return None  # no content before this turn to measure its start from
        at = bounds[2 * i - 1]
        while at < len(text) and text[at].isspace():
            at += 1
        tail = ends.tails.get(messages[i - 1]["role"])
        if tail is None or not text.startswith(tail, at):
            tail = _tail_by_prefix(render, messages, i)
            if tail is None or not text.startswith(tail, at):
                return None
        start = at + len(tail)
        if i + 1 < len(messages):
            if messages[i + 1]["role"] == "assistant":
                return None
            stop = bounds[2 * (i + 1)]
        else:
            stop = len(text)
        if msg["content"].strip() or _structured(msg):  # from its first character written, as the reference
            while start < stop and text[start].isspace():
                start += 1
        found = [k + len(e) for e in ends.ends if (k := text.rfind(e, start, stop)) >= 0]
        if found:
            end = max(found)
        elif i + 1 == len(messages):
            end = len(text.rstrip())
        else:
            return None  # no end-of-turn marker: the footer cannot be told from the next header
        if end > start:
            spans.append((start, end))
    return spans
