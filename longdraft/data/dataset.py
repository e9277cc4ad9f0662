"""Loading a data path (any kind of ``data/sources.py``) into tokenised samples with packed loss masks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from longdraft.data.errors import DataError
from longdraft.data.loss_mask import pack_loss_mask
from longdraft.data.rows import Row
from longdraft.data.sources import open_source, parse_record
from longdraft.data.tokenize import tokenize_row

_PROGRESS_MIN_BYTES = 4 << 20  # show a progress bar only for files from 4 MiB up


@dataclass
class Sample:
    sample_id: str  # "file:line" (JSONL) or "file:row" (a table; data/sources.py)
    input_ids: list[int]
    packed_loss_mask: list[int]
    num_loss_tokens: int

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclass
class DataReport:
    path: str
    num_rows: int = 0  # non-blank lines read
    num_samples: int = 0
    num_truncated: int = 0
    num_without_loss_tokens: int = 0  # kept; the trainer decides (min_loss_tokens)
    num_tokens: int = 0
    num_loss_tokens: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason kind -> rows skipped

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        s = (
            f"{self.path}: {self.num_samples} samples from {self.num_rows} rows, {self.num_tokens} tokens "
            f"({self.num_loss_tokens} with loss), {self.num_truncated} truncated, "
            f"{self.num_without_loss_tokens} without loss tokens"
        )
        if self.skipped:
            s += ", skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        return s


def check_sample_options(max_seq_length: int, on_bad_row: str) -> None:
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row={on_bad_row!r}: expected 'error' or 'skip'")
    if max_seq_length < 1:
        raise ValueError(f"max_seq_length={max_seq_length}: expected >= 1")


def sample_from_row(
    location: str,
    row: Row | DataError,
    tokenizer: Any,
    max_seq_length: int,
    on_bad_row: Literal["error", "skip"],
    report: DataReport,
) -> Sample | None:
    """Tokenise and mask one row, counting it in ``report``. A bad row raises ``DataError``
    ("file:line: reason") unless ``on_bad_row == "skip"``: then it is counted and None returned."""
    report.num_rows += 1
    try:
        if isinstance(row, DataError):
            raise row
        tok = tokenize_row(tokenizer, row, max_seq_length)
    except DataError as e:
        e = e if e.location else e.at(location)
        if on_bad_row == "error":
            raise e from None
        report.skipped[e.kind] += 1
        return None
    n_loss = sum(tok.loss_mask)
    report.num_samples += 1
    report.num_truncated += tok.truncated
    report.num_without_loss_tokens += n_loss == 0
    report.num_tokens += len(tok.input_ids)
    report.num_loss_tokens += n_loss
    return Sample(location, tok.input_ids, pack_loss_mask(tok.loss_mask), n_loss)


def iter_samples(
    path: str | Path,
    tokenizer: Any,
    max_seq_length: int,
    on_bad_row: Literal["error", "skip"] = "error",
    max_rows: int | None = None,
    report: DataReport | None = None,
) -> Iterator[Sample]:
    """The samples of a data path in its order, one at a time (at most ``max_rows`` samples)."""
    check_sample_options(max_seq_length, on_bad_row)
    source = open_source(path)
    report = report if report is not None else DataReport(path=source.name)
    records = tqdm(
        source.records(),
        desc=f"tokenizing {Path(source.name).name}",
        unit=" rows",
        disable=source.size_bytes < _PROGRESS_MIN_BYTES,
    )
    for location, record in records:
        if max_rows is not None and report.num_samples >= max_rows:
            break
        sample = sample_from_row(
            location, parse_record(location, record), tokenizer, max_seq_length, on_bad_row, report
        )
        if sample is not None:
            yield sample


def load_samples(
    path: str | Path,
    tokenizer: Any,
    max_seq_length: int,
    on_bad_row: Literal["error", "skip"] = "error",
    max_rows: int | None = None,
) -> tuple[list[Sample], DataReport]:
    """Read, tokenise and mask every row of a (small) data path: held-out sets, evaluation prompts.

    A bad row raises `DataError` ("file:line: reason") unless `on_bad_row == "skip"`, in which
    case it is counted in `report.skipped[kind]`. `max_rows` caps the number of samples kept.
    """
    report = DataReport(path=str(Path(path)))
    samples = list(iter_samples(path, tokenizer, max_seq_length, on_bad_row, max_rows, report))
    return samples, report
