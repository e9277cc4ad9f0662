"""Training samples streamed from a JSONL file in a seeded order that changes every epoch.

The file is read ``window`` rows at a time and each window is shuffled by its own seeded
permutation (seed, epoch, window), so memory holds one window of raw lines however large the file
is, and the order is a pure function of the seed. ``position`` counts the rows consumed (bad rows
included): a stream opened at ``position`` continues exactly where one that consumed that many rows
stands, re-reading the skipped part of the file without tokenising it. With ``tokenizer_workers``
the upcoming rows are tokenised ahead in a process pool (``token_pool``), accounted for in stream
order, so samples, positions and the report are the same as in-process; ``close()`` ends the pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from longdraft.data.dataset import DataReport, Sample, check_sample_options, sample_from_row
from longdraft.data.rows import iter_lines, parse_line
from longdraft.data.token_pool import Outcome, TokenizerPool, add_counts
from longdraft.errors import UserError

DEFAULT_WINDOW = 4096


class NoUsableRows(UserError):
    """A whole pass over the file produced no sample (every row bad and skipped, or an empty file)."""


def _window_order(n: int, seed: int, epoch: int, window: int) -> list[int]:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + window)
    return torch.randperm(n, generator=gen).tolist()


class SampleStream:
    def __init__(
        self,
        path: str | Path,
        tokenizer: Any,
        max_seq_length: int,
        seed: int,
        on_bad_row: Literal["error", "skip"] = "error",
        max_rows: int | None = None,
        window: int = DEFAULT_WINDOW,
        position: int = 0,
        tokenizer_workers: int = 0,
    ):
        self.path = check_sample_options(path, max_seq_length, on_bad_row)
        if window < 1:
            raise ValueError(f"window={window}: expected >= 1")
        if tokenizer_workers < 0:
            raise ValueError(f"tokenizer_workers={tokenizer_workers}: expected >= 0")
        self.tokenizer, self.max_seq_length, self.on_bad_row = tokenizer, max_seq_length, on_bad_row
        self.seed, self.max_rows, self.window = seed, max_rows, window
        self.position = position
        self.epoch = 0
        self.report = DataReport(path=str(self.path))  # rows this stream consumed (not the skipped start)
        self.rows_per_epoch: int | None = None  # known after the first full pass over the file
        self._rows = self._ordered_rows(position)
        self.tokenizer_workers = tokenizer_workers
        self._pool: TokenizerPool | None = None  # started on the first sample drawn

    def _windows(self) -> Iterator[list[tuple[str, str]]]:
        window: list[tuple[str, str]] = []
        for count, row in enumerate(iter_lines(self.path)):
            if self.max_rows is not None and count >= self.max_rows:
                break
            window.append(row)
            if len(window) == self.window:
                yield window
                window = []
        if window:
            yield window

    def _ordered_rows(self, start: int) -> Iterator[tuple[int, str, str]]:
        """(epoch, location, line) in stream order from row ``start`` on, epoch after epoch."""
        position, epoch = 0, 0
        while True:
            rows_this_epoch = 0
            for w, window in enumerate(self._windows()):
                rows_this_epoch += len(window)
                if position + len(window) <= start:  # skipped without shuffling or parsing
                    position += len(window)
                    continue
                for i in _window_order(len(window), self.seed, epoch, w):
                    if position >= start:
                        yield (epoch, *window[i])
                    position += 1
            if rows_this_epoch == 0:
                raise NoUsableRows(f"{self.path}: no rows to train on")
            self.rows_per_epoch = rows_this_epoch
            epoch += 1

    def __iter__(self) -> SampleStream:
        return self

    def __next__(self) -> Sample:
        try:
            return self._next_sample()
        except BaseException:  # a bad row in error mode, or no usable rows: the stream is finished
            self.close()
            raise

    def _next_sample(self) -> Sample:
        tried = 0
        while True:
            sample = self._next_row_sample()
            if sample is not None:
                return sample
            tried += 1
            if self.rows_per_epoch is not None and tried > self.rows_per_epoch:  # a whole pass without a sample
                raise NoUsableRows(
                    f"{self.path}: every one of its {self.rows_per_epoch} rows is bad and was skipped "
                    f"({dict(self.report.skipped)}); nothing to train on"
                )

    def _next_row_sample(self) -> Sample | None:
        if not self.tokenizer_workers:
            self.epoch, location, line = next(self._rows)
            self.position += 1
            return sample_from_row(
                location, parse_line(location, line), self.tokenizer, self.max_seq_length, self.on_bad_row, self.report
            )
        if self._pool is None:
            self._pool = TokenizerPool(self._rows, self.tokenizer, self.max_seq_length, self.tokenizer_workers)
        self.epoch, location, outcome = next(self._pool)
        self.position += 1
        return self._account(location, outcome)

    def _account(self, location: str, outcome: Outcome) -> Sample | None:
        sample, counts = outcome
        if counts is None:  # a bad row: counted, then raised or skipped, exactly as in-process
            return sample_from_row(location, sample, self.tokenizer, self.max_seq_length, self.on_bad_row, self.report)
        add_counts(self.report, counts)
        return sample

    def close(self) -> None:
        """End the tokenizer pool, if any (its worker processes exit); the stream cannot be drawn from after."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
            self.tokenizer_workers = 0
            self._rows = iter(())

    def take(self, count: int) -> list[Sample]:
        return [next(self) for _ in range(count)]
