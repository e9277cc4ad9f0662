"""Assistant loss spans from ONE rendering of a conversation.

The reference algorithm (``tokenize.spans_by_prefix_renders``) renders the conversation's prefixes
2-3 times per assistant turn, quadratic in turns. Prefix-stable chat templates render each message
as a *segment* ``header + content + footer`` whose header and footer depend only on the role (and, for
the first message, on being first). A ``TurnShape`` is those headers and footers, learned once per
template by running the reference algorithm on a probe conversation of placeholder contents.

A conversation is then rendered once and walked segment by segment: each header, the (stripped)
content and the footer must follow one another (whitespace between them is tolerated, since
templates differ in trimming contents), and nothing but whitespace may follow the last segment. Where
the walk matches, the spans are exactly the reference's: the content starts after its header (the
reference searches after the generation prompt, which the probe checks equals the assistant header),
and the span ends at the segment's end with trailing whitespace removed. Where anything does not
match (a role not probed, a template that rewrites or moves contents, a date in a header), the caller
falls back to the reference algorithm, which also produces its errors.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Render = Callable[[list[dict[str, str]], bool], str]

_PROBE = [
    ("system", "ldprobe0sys"),
    ("user", "ldprobe1usr"),
    ("assistant", "ldprobe2ast"),
    ("user", "ldprobe3usr"),
    ("assistant", "ldprobe4ast"),
]


@dataclass(frozen=True)
class Segment:
    header: str  # stripped of whitespace on both sides; so is the footer
    footer: str


@dataclass(frozen=True)
class TurnShape:
    first: dict[str, Segment]  # role -> segment of the conversation's first message
    later: dict[str, Segment]  # role -> segment of any later message


def _segment(seg: str, content: str) -> Segment | None:
    at = seg.find(content)
    if at < 0 or seg.find(content, at + 1) >= 0:
        return None
    return Segment(seg[:at].strip(), seg[at + len(content) :].strip())


def _probe_segments(render: Render, probe: list[dict[str, str]]) -> list[Segment] | None:
    """The segments of `probe` by the reference's own renders of each prefix, or None if unstable."""
    segments, previous = [], ""
    for j, msg in enumerate(probe):
        full = render(probe[: j + 1], False)
        if not full.startswith(previous):
            return None
        if msg["role"] == "assistant":
            # The reference searches the content after the generation prompt: it must end this header.
            try:
                gen = render(probe[:j], True)
            except Exception:
                gen = ""  # the reference's own fallback for an empty conversation
            header = previous + full[len(previous) :].split(msg["content"])[0]
            if not full.startswith(gen) or gen.rstrip() != header.rstrip():
                return None
        seg = _segment(full[len(previous) :], msg["content"])
        if seg is None:
            return None
        segments.append(seg)
        previous = full
    return segments


def learn_turn_shape(render: Render) -> TurnShape | None:
    """Probe the template (a few renders, once); None when it does not render message by message."""

    def probe(roles: list[tuple[str, str]]) -> list[Segment] | None:
        try:
            return _probe_segments(render, [{"role": r, "content": c} for r, c in roles])
        except Exception:  # a template that refuses the probe's roles: no shape for them
            return None

    full = probe(_PROBE)
    if full is None or full[1] != full[3] or full[2] != full[4]:
        return None
    first = {"system": full[0]}
    for role, content in _PROBE[1:3]:
        alone = probe([(role, content)])
        if alone is not None:
            first[role] = alone[0]
    return TurnShape(first=first, later={"user": full[1], "assistant": full[2]})


_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (template, shape)


def turn_shape_for(tokenizer: Any, render: Render) -> TurnShape | None:
    """The tokenizer's shape, learned at its first conversation (again if its template changes)."""
    template = repr(getattr(tokenizer, "chat_template", None))
    try:
        cached = _SHAPES.get(tokenizer)
    except TypeError:  # not weak-referenceable: learn every time (still correct)
        return learn_turn_shape(render)
    if cached is None or cached[0] != template:
        cached = (template, learn_turn_shape(render))
        _SHAPES[tokenizer] = cached
    return cached[1]


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _expect(text: str, at: int, part: str) -> int:
    """Position after `part` at `at` (after whitespace), or -1."""
    at = _skip_space(text, at)
    return at + len(part) if text.startswith(part, at) else -1


def _end_without_space(text: str, end: int) -> int:
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return end


def spans_from_one_render(shape: TurnShape, text: str, messages: list[dict[str, str]]) -> list[tuple[int, int]] | None:
    """The reference's loss spans of `text` (the whole conversation rendered), or None if the walk fails."""
    spans: list[tuple[int, int]] = []
    at = 0
    for j, msg in enumerate(messages):
        seg = (shape.first if j == 0 else shape.later).get(msg["role"])
        if seg is None or (at := _expect(text, at, seg.header)) < 0:
            return None
        content = msg["content"].strip()
        if not content and msg["role"] == "assistant":
            return None  # the reference's span then starts inside the whitespace after the header
        start = _skip_space(text, at)
        if (at := _expect(text, at, content)) < 0 or (at := _expect(text, at, seg.footer)) < 0:
            return None
        if msg["role"] == "assistant":
            end = _end_without_space(text, at)  # the segment's end, trailing whitespace removed
            if end > start:
                spans.append((start, end))
    return spans if _skip_space(text, at) == len(text) else None
