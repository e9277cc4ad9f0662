"""A generated assistant turn split into its reasoning and its answer (``longdraft regenerate``).

Targets write their reasoning in one of two ways: between ``<think>`` and ``</think>`` before the
answer (Qwen3, DeepSeek-R1, QwQ: what their templates read back from ``content`` or
``reasoning_content``), or as harmony messages on the ``analysis`` channel before the ``final`` one
(gpt-oss, whose template reads ``thinking``; `messages.py` gives it that key). Text in neither
form is all answer.
"""

from __future__ import annotations

import re

# A harmony message: <|channel|>NAME ...<|message|>BODY, ended by <|end|>, <|return|>, <|call|> or the text's end
_HARMONY = re.compile(
    r"<\|channel\|>(\w+)[^<]*<\|message\|>(.*?)(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|$)", re.S
)


def split_reasoning(text: str, raw: str) -> tuple[str | None, str]:
    """(reasoning or None, answer) of a generated turn; `text` is decoded without special tokens, `raw`
    with them (harmony's channel markers are special tokens)."""
    if "<|channel|>" in raw:
        messages = _HARMONY.findall(raw)
        reasoning = "".join(body for channel, body in messages if channel == "analysis")
        answer = "".join(body for channel, body in messages if channel == "final")
        return (reasoning.strip() or None), answer.strip()
    if "</think>" in text:
        thought, _, answer = text.partition("</think>")
        return thought.split("<think>")[-1].strip(), answer.strip()
    return None, text.strip()
