"""``longdraft bench stream``: start-up time and memory of the training stream on a large JSONL file.

Writes a synthetic file of ``--rows`` rows (or reads ``--data``), then measures what a run pays
before its first step: the draft-vocab pass (``data.vocab_rows`` samples), the time to the first
training sample of the stream the controller (or a one-device run) reads, and the resident memory
before and after drawing ``--samples`` samples. ``--compare-rows N`` also times loading N rows
whole, as every run did before streaming.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def write_synthetic(path: Path, rows: int) -> Path:
    with path.open("w") as f:
        for i in range(rows):
            f.write(
                json.dumps(
                    {
                        "conversations": [
                            {"role": "user", "content": f"question {i}: what say you of the sea and the moon?"},
                            {
                                "role": "assistant",
                                "content": f"answer {i}: the sea is wide, the moon is bright tonight.",
                            },
                        ]
                    }
                )
                + "\n"
            )
    return path


def run(rows: int, samples: int, vocab_rows: int, compare_rows: int, data: str | None) -> dict:
    from transformers import AutoTokenizer

    from longdraft.data.dataset import iter_samples, load_samples
    from longdraft.data.stream import SampleStream
    from longdraft.data.vocab import build_vocab_mapping
    from longdraft.testing.tiny_target import build_tiny_target

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_target(Path(tmp) / "target"), local_files_only=True)
        start = time.perf_counter()
        path = Path(data) if data else write_synthetic(Path(tmp) / "train.jsonl", rows)
        write_s = time.perf_counter() - start
        rss_start = _rss_bytes()
        start = time.perf_counter()
        build_vocab_mapping(iter_samples(path, tokenizer, 512, max_rows=vocab_rows), 384, 200)
        vocab_s = time.perf_counter() - start
        start = time.perf_counter()
        stream = SampleStream(path, tokenizer, 512, seed=0)
        next(stream)
        first_s = time.perf_counter() - start
        rss_first = _rss_bytes()
        start = time.perf_counter()
        for _ in range(samples - 1):
            next(stream)
        draw_s = time.perf_counter() - start
        rss_after = _rss_bytes()
        result = {
            "rows": rows if not data else None,
            "file_bytes": path.stat().st_size,
            "write_s": write_s,
            "vocab_rows": vocab_rows,
            "vocab_pass_s": vocab_s,
            "first_sample_s": first_s,
            "startup_s": vocab_s + first_s,
            "samples_drawn": samples,
            "samples_per_s": (samples - 1) / draw_s,
            "rss_start_bytes": rss_start,
            "rss_first_sample_bytes": rss_first,
            "rss_after_bytes": rss_after,
            "rss_growth_bytes": rss_after - rss_first,
        }
        if compare_rows:
            start = time.perf_counter()
            loaded, _ = load_samples(path, tokenizer, 512, max_rows=compare_rows)
            result.update(
                load_whole_rows=compare_rows,
                load_whole_s=time.perf_counter() - start,
                load_whole_rss_bytes=_rss_bytes() - rss_after,
            )
            del loaded
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longdraft bench stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic file")
    parser.add_argument("--data", help="measure this JSONL file instead of a synthetic one")
    parser.add_argument("--samples", type=int, default=20_000, help="samples drawn after the first")
    parser.add_argument("--vocab-rows", type=int, default=10_000, help="data.vocab_rows")
    parser.add_argument("--compare-rows", type=int, default=0, help="also load this many rows whole")
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args(argv)
    result = run(args.rows, args.samples, args.vocab_rows, args.compare_rows, args.data)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
