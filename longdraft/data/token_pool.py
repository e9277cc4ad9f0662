"""A stream's upcoming rows tokenised in a small process pool, the outcomes taken strictly in order.

Workers only compute: each row becomes its ``Sample`` with the counts it adds to a ``DataReport``, or
its located ``DataError``. The stream accounts for the outcomes one at a time in stream order, so
positions, reports and the bad-row policy are exactly those of in-process tokenisation.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import fields
from itertools import islice
from typing import Any

from longdraft.data.dataset import DataReport, Sample, sample_from_row
from longdraft.data.errors import DataError
from longdraft.data.sources import Record, parse_record

ROWS_PER_TASK = 4  # rows sent together: fewer round trips, still a small read-ahead
TASKS_AHEAD_PER_WORKER = 2  # in flight per worker, so a worker never waits for the stream

Outcome = tuple[Sample, DataReport] | tuple[DataError, None]

_worker_state: dict[str, Any] = {}


def _start_worker(tokenizer: Any, max_seq_length: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism; no nested thread pools
    import torch

    torch.set_num_threads(1)
    _worker_state.update(tokenizer=tokenizer, max_seq_length=max_seq_length)


def _tokenise(rows: list[tuple[str, Record]]) -> list[Outcome]:
    out: list[Outcome] = []
    for location, record in rows:
        counts = DataReport(path="")
        try:
            row = parse_record(location, record)
            sample = sample_from_row(
                location, row, _worker_state["tokenizer"], _worker_state["max_seq_length"], "error", counts
            )
        except DataError as e:  # located by sample_from_row; the stream applies on_bad_row in order
            out.append((e, None))
        else:
            out.append((sample, counts))
    return out


def add_counts(report: DataReport, counts: DataReport) -> None:
    for f in fields(DataReport):
        if f.name != "path":
            setattr(report, f.name, getattr(report, f.name) + getattr(counts, f.name))


class TokenizerPool:
    """(epoch, location, outcome) for each row of ``rows`` in order, tokenised ahead by ``workers`` processes."""

    def __init__(self, rows: Iterator[tuple[int, str, Record]], tokenizer: Any, max_seq_length: int, workers: int):
        # spawn, not fork: the parent may hold torch or tokenizers threads (a forked child can deadlock on their locks)
        self._executor = ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=_start_worker, initargs=(tokenizer, max_seq_length)
        )
        self._rows = rows
        self._tasks_ahead = TASKS_AHEAD_PER_WORKER * workers
        self._pending: deque[tuple[list[tuple[int, str]], Future]] = deque()
        self._ready: deque[tuple[int, str, Outcome]] = deque()

    def _submit_ahead(self) -> None:
        while len(self._pending) < self._tasks_ahead:
            batch = list(islice(self._rows, ROWS_PER_TASK))  # the row iterator never ends (epoch after epoch)
            keys = [(epoch, location) for epoch, location, _ in batch]
            self._pending.append((keys, self._executor.submit(_tokenise, [(loc, record) for _, loc, record in batch])))

    def __next__(self) -> tuple[int, str, Outcome]:
        self._submit_ahead()
        if not self._ready:
            keys, future = self._pending.popleft()
            self._ready.extend((epoch, location, outcome) for (epoch, location), outcome in zip(keys, future.result()))
        return self._ready.popleft()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
