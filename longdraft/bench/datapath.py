"""``longdraft bench datapath``: samples per second the CPU data path sustains on long chat rows.

Builds multi-turn chat rows of about ``--tokens`` tokens (``--turns`` user/assistant pairs) with the
tiny target's tokenizer and chat template, then times what turns a row into a sample: the chat
template, tokenisation with offsets, the assistant-only mask and its run-length packing
(``data.dataset.sample_from_row``). It runs in one process, then in each of ``--procs`` processes at
once (each its own rows), and prints the samples per second of each as JSON. With
``--tokenizer-workers`` it also draws the rows through the training stream (``SampleStream``) with each
pool size (0: in-process), as the controller does.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

_WORDS = [
    "the",
    "sea",
    "is",
    "wide",
    "and",
    "the",
    "moon",
    "is",
    "bright",
    "tonight",
    "over",
    "quiet",
    "harbours",
    "full",
    "of",
    "small",
    "boats",
]


def chat_row(index: int, turns: int, words_per_turn: int) -> list[dict[str, str]]:
    """One conversation of ``turns`` user/assistant pairs, each message about ``words_per_turn`` words."""
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for t in range(turns):
        body = " ".join(_WORDS[(index + t + k) % len(_WORDS)] for k in range(words_per_turn))
        messages.append({"role": "user", "content": f"question {index}.{t}: {body}?"})
        messages.append({"role": "assistant", "content": f"answer {index}.{t}: {body}."})
    return messages


def _tokenizer(target_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(target_dir, local_files_only=True)


def _time_rows(
    target_dir: str, rows: int, turns: int, words: int, max_len: int, seed: int
) -> tuple[int, float, int, float]:
    """Turn ``rows`` rows into samples; return (samples, wall seconds, tokens, CPU seconds of this process)."""
    import torch

    from longdraft.data.dataset import DataReport, sample_from_row
    from longdraft.data.rows import Conversation

    torch.set_num_threads(1)
    tokenizer = _tokenizer(target_dir)
    convs = [Conversation(chat_row(seed * rows + i, turns, words)) for i in range(rows)]
    report = DataReport(path="bench")
    sample_from_row("warm:0", convs[0], tokenizer, max_len, "error", report)  # per-template set-up, once
    report = DataReport(path="bench")
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, conv in enumerate(convs):
        sample_from_row(f"bench:{i}", conv, tokenizer, max_len, "error", report)
    return report.num_samples, time.perf_counter() - start, report.num_tokens, time.process_time() - cpu_start


def _worker(args: tuple) -> tuple[int, float, int, float]:
    return _time_rows(*args)


_WARM_SAMPLES = 16


def _time_stream(target_dir: str, path: Path, rows: int, max_len: int, workers: int) -> dict:
    """Samples per second the training stream yields with ``workers`` tokenizer processes, after its first."""
    from longdraft.data.stream import SampleStream

    stream = SampleStream(path, _tokenizer(target_dir), max_len, seed=0, tokenizer_workers=workers)
    try:
        start = time.perf_counter()
        next(stream)  # pool start-up and the first row, timed apart
        first = time.perf_counter() - start
        stream.take(_WARM_SAMPLES)  # every worker started and past its first row (template set-up)
        start, cpu_start = time.perf_counter(), time.process_time()
        stream.take(rows)
        seconds = time.perf_counter() - start
        return {
            "samples_per_s": rows / seconds,
            "first_sample_s": first,
            "controller_cpu_s_per_sample": (time.process_time() - cpu_start) / rows,
        }
    finally:
        stream.close()


def run(tokens: int, turns: int, rows: int, procs: list[int], tokenizer_workers: list[int] | None = None) -> dict:
    from longdraft.data.rows import Conversation
    from longdraft.data.tokenize import tokenize_row
    from longdraft.testing.tiny_target import build_tiny_target

    with tempfile.TemporaryDirectory() as tmp:
        target_dir = str(build_tiny_target(Path(tmp) / "target"))
        tokenizer = _tokenizer(target_dir)
        # Words per message so that one row is about `tokens` tokens long.
        probe = tokenize_row(tokenizer, Conversation(chat_row(0, turns, 100)), 1 << 30)
        words = max(1, round(100 * tokens / len(probe.input_ids)))
        max_len = 2 * tokens
        n, seconds, n_tokens, cpu = _time_rows(target_dir, rows, turns, words, max_len, 0)
        result = {
            "tokens_per_row": n_tokens / n,
            "turns": turns,
            "rows": rows,
            # per CPU second too: on a shared machine the wall rate measures the neighbours as well
            "one_process": {
                "samples_per_s": n / seconds,
                "tokens_per_s": n_tokens / seconds,
                "samples_per_cpu_s": n / cpu,
            },
            "processes": {},
        }
        ctx = mp.get_context("spawn")
        for p in procs:
            with ctx.Pool(p) as pool:
                start = time.perf_counter()
                parts = pool.map(_worker, [(target_dir, rows, turns, words, max_len, s + 1) for s in range(p)])
                wall = time.perf_counter() - start
            samples = sum(part[0] for part in parts)
            result["processes"][str(p)] = {
                # Each process's own rate, summed: what p tokenising producers sustain together.
                "samples_per_s": sum(part[0] / part[1] for part in parts),
                "wall_samples_per_s_with_startup": samples / wall,
                "samples_per_cpu_s_each": [part[0] / part[3] for part in parts],
            }
        if tokenizer_workers:
            path = Path(tmp) / "chat.jsonl"
            path.write_text("".join(json.dumps({"messages": chat_row(i, turns, words)}) + "\n" for i in range(rows)))
            result["stream"] = {str(w): _time_stream(target_dir, path, rows, max_len, w) for w in tokenizer_workers}
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longdraft bench datapath", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32_768, help="tokens per chat row (about)")
    parser.add_argument("--turns", type=int, default=32, help="user/assistant pairs per row")
    parser.add_argument("--rows", type=int, default=8, help="rows timed per process")
    parser.add_argument("--procs", default="2", help="comma-separated process counts, e.g. 2,4")
    parser.add_argument(
        "--tokenizer-workers",
        default="",
        help="comma-separated data.tokenizer_workers to time the stream with, e.g. 0,2",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args(argv)
    procs = [int(p) for p in args.procs.split(",") if p]
    workers = [int(w) for w in args.tokenizer_workers.split(",") if w]
    result = run(args.tokens, args.turns, args.rows, procs, workers)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
