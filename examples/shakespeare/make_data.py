"""Cut Shakespeare's plays into the quick-start JSONL data sets, split by play.

    python examples/shakespeare/make_data.py            # writes examples/shakespeare/data/*.jsonl

Writes `train_text.jsonl` / `heldout_text.jsonl` (`{"text": passage}`, ~700-1500 characters, i.e. a few
hundred tokens) and `train_chat.jsonl` / `heldout_chat.jsonl` (`{"conversations": [{"role": "user", ...},
{"role": "assistant", ...}, ...]}` built from consecutive speeches of one scene), and `heldout_plays.jsonl`
(each held-out play whole, for `longdraft eval --context-lengths`). The held-out plays are
`plays.HELDOUT_PLAYS`. Train files keep an evenly spaced subset of rows so that each stays under 3 MB;
held-out files keep every row. Rows are shuffled with `--seed`; the output is byte-for-byte deterministic.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import plays

MAX_FILE_BYTES = 3_000_000


def evenly_spaced(rows: list, k: int) -> list:
    """k rows spread over the whole list (every play is represented), in order."""
    if k >= len(rows):
        return list(rows)
    return [rows[i * len(rows) // k] for i in range(k)]


def write_jsonl(path: Path, rows: list[dict], max_bytes: int | None = MAX_FILE_BYTES) -> int:
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{path}: {len(data)} bytes > {max_bytes}; lower the row count")
    path.write_bytes(data)
    return len(data)


def build(out: Path, seed: int, train_text_rows: int, train_chat_rows: int) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": (plays.TRAIN_PLAYS, train_text_rows, train_chat_rows),
        "heldout": (plays.HELDOUT_PLAYS, None, None),
    }
    counts: dict[str, int] = {}
    for split, (stems, text_cap, chat_cap) in splits.items():
        text_rows = [{"text": p} for stem in stems for p in plays.passages(plays.read_play(stem))]
        chat_rows = [{"conversations": c} for stem in stems for c in plays.conversations(stem)]
        for kind, rows, cap in (("text", text_rows, text_cap), ("chat", chat_rows, chat_cap)):
            rows = evenly_spaced(rows, cap) if cap else rows
            random.Random(seed).shuffle(rows)
            path = out / f"{split}_{kind}.jsonl"
            size = write_jsonl(path, rows)
            counts[path.name] = len(rows)
            print(f"{path}: {len(rows)} rows, {size / 1e6:.2f} MB")
    # Whole held-out plays, one row each: long documents for acceptance by context length.
    path = out / "heldout_plays.jsonl"
    size = write_jsonl(path, [{"text": plays.read_play(stem)} for stem in plays.HELDOUT_PLAYS])
    counts[path.name] = len(plays.HELDOUT_PLAYS)
    print(f"{path}: {len(plays.HELDOUT_PLAYS)} rows, {size / 1e6:.2f} MB")
    return counts


def write_long_passages(path: Path, seed: int, min_chars: int, max_chars: int) -> int:
    """Training passages of the training plays long enough to fill long sequences (16000-20000
    characters fill 4096 tokens: ``draft_long.yaml``); generated, not shipped (about 5 MB)."""
    rows = [
        {"text": p}
        for stem in plays.TRAIN_PLAYS
        for p in plays.passages(plays.read_play(stem), min_chars=min_chars, max_chars=max_chars)
    ]
    random.Random(seed).shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = write_jsonl(path, rows, max_bytes=None)  # not shipped: no size cap
    print(f"{path}: {len(rows)} rows, {size / 1e6:.2f} MB")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument(
        "--long-passages",
        type=Path,
        default=None,
        help="only write the long training passages (--long-chars) to this file",
    )
    parser.add_argument(
        "--long-chars",
        type=int,
        nargs=2,
        default=[16000, 20000],
        metavar=("MIN", "MAX"),
        help="characters per long passage (16000-20000: 4096 tokens and more)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-text-rows", type=int, default=2400)
    parser.add_argument("--train-chat-rows", type=int, default=3000)
    args = parser.parse_args()
    if args.long_passages is not None:
        write_long_passages(args.long_passages, args.seed, *args.long_chars)
        return
    print(f"held-out plays: {', '.join(plays.HELDOUT_PLAYS)}")
    build(args.out, args.seed, args.train_text_rows, args.train_chat_rows)


if __name__ == "__main__":
    main()
