"""Training samples streamed from a data path (``data/sources.py``: JSONL, Parquet, a save_to_disk
folder, ``hf:``) in a seeded order that changes every epoch.

The rows are read ``window`` at a time and each window is shuffled by its own seeded permutation
(seed, epoch, window), so memory holds one window of raw records however large the data is, and the
order is a pure function of the seed, the same for every way of storing the same rows. ``position``
counts the rows consumed (bad rows included): a stream opened at ``position`` continues exactly where
one that consumed that many rows stands, starting to read at the window holding that row (a JSONL file
is counted once, then re-read up to there; a table seeks to it) without tokenising the skipped rows.
With ``tokenizer_workers`` the upcoming rows are tokenised ahead in a process pool (``token_pool``),
accounted for in stream order, so samples, positions and the report are the same as in-process;
``close()`` ends the pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch

from longdraft.data.dataset import DataReport, Sample, check_sample_options, sample_from_row
from longdraft.data.sources import Record, open_source, parse_record
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
        check_sample_options(max_seq_length, on_bad_row)
        self.source = open_source(path)
        self.path = self.source.name
        if window < 1:
            raise ValueError(f"window={window}: expected >= 1")
        if tokenizer_workers < 0:
            raise ValueError(f"tokenizer_workers={tokenizer_workers}: expected >= 0")
        self.tokenizer, self.max_seq_length, self.on_bad_row = tokenizer, max_seq_length, on_bad_row
        self.seed, self.max_rows, self.window = seed, max_rows, window
        self.position = position
        self.epoch = 0
        self.report = DataReport(path=str(self.path))  # rows this stream consumed (not the skipped start)
        self.rows_per_epoch: int | None = None  # known after the first full pass (or the first row drawn at a position)
        self._rows = self._ordered_rows(position)
        self.tokenizer_workers = tokenizer_workers
        self._pool: TokenizerPool | None = None  # started on the first sample drawn

    def _windows(self, first: int) -> Iterator[list[tuple[str, Record]]]:
        """The epoch's windows from window ``first`` on (the rows of earlier windows are not read)."""
        start = first * self.window
        rows = self.source.records(start)
        if self.max_rows is not None:
            rows = islice(rows, max(0, self.max_rows - start))
        while window := list(islice(rows, self.window)):
            yield window

    def _ordered_rows(self, start: int) -> Iterator[tuple[int, str, Record]]:
        """(epoch, location, record) in stream order from row ``start`` on, epoch after epoch."""
        epoch, offset = 0, start
        if start:  # whole epochs skipped by arithmetic: the row count is needed once
            rows = len(self.source) if self.max_rows is None else min(len(self.source), self.max_rows)
            if rows == 0:
                raise NoUsableRows(f"{self.path}: no rows to train on")
            epoch, offset = divmod(start, rows)
            self.rows_per_epoch = rows
        while True:
            first = offset // self.window
            rows_this_epoch = first * self.window
            for w, window in enumerate(self._windows(first), start=first):
                rows_this_epoch += len(window)
                skip = offset - w * self.window  # rows of this window before ``start`` (first window only)
                for k, i in enumerate(_window_order(len(window), self.seed, epoch, w)):
                    if k >= skip:
                        yield (epoch, *window[i])
            if rows_this_epoch == 0:
                raise NoUsableRows(f"{self.path}: no rows to train on")
            self.rows_per_epoch = rows_this_epoch
            epoch, offset = epoch + 1, 0

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
            self.epoch, location, record = next(self._rows)
            self.position += 1
            return sample_from_row(
                location,
                parse_record(location, record),
                self.tokenizer,
                self.max_seq_length,
                self.on_bad_row,
                self.report,
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
