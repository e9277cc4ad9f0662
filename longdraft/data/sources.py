"""The rows of a data path, whatever way it is stored, read lazily in file order.

A data path (``data.train_path``, ``data.eval_path``, ``eval.context_path``) is one of:
- a JSONL file (one JSON object per line; blank lines ignored),
- a Parquet file, or a folder of them (every ``*.parquet`` below it, in path order),
- a folder written by ``datasets.save_to_disk`` (its Arrow files, memory-mapped),
- ``hf:org/name[:split]``: a Hugging Face dataset (``split`` defaults to ``train``), loaded by ``datasets``.

Every kind is a ``RowSource``: its length, its records in order from any row (``records``), and the
"file:row" that names a row in errors and sample ids. A record is a JSONL line (``str``) or a row of a
table (``dict``); ``parse_record`` turns either into a ``Row`` or the located ``DataError``. Rows of a
table are numbered from 0 within their file (the index pandas or ``datasets`` give it), lines of JSONL
from 1 (the line an editor shows).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longdraft.data.errors import DataError
from longdraft.data.rows import Row, parse_line, parse_row
from longdraft.errors import UserError

Record = str | dict[str, Any]

HUB_PREFIX = "hf:"
ACCEPTED = (
    "a file (JSONL or Parquet), a folder (of Parquet files, or from datasets.save_to_disk) or hf:org/name[:split]"
)


class DataPathError(UserError, FileNotFoundError):
    """A data path that is not there or not of a kind we read (one line: the path and what was expected)."""


class RowSource(ABC):
    name: str  # what reports and errors call the whole source

    @abstractmethod
    def __len__(self) -> int:
        """Rows in the source (a JSONL file is counted by one pass over it, the others from metadata)."""

    @abstractmethod
    def records(self, start: int = 0) -> Iterator[tuple[str, Record]]:
        """("file:row", record) for each row from row ``start`` on, in order; the rows before ``start``
        are skipped without being decoded (a columnar source seeks to them)."""

    @abstractmethod
    def describe(self, index: int) -> str:
        """The "file:row" of row ``index`` (0-based over the whole source)."""

    @property
    def size_bytes(self) -> int:
        """Bytes on disk (for progress bars); 0 when unknown."""
        return 0


class JsonlSource(RowSource):
    def __init__(self, path: Path):
        self.path, self.name = path, str(path)
        self._length: int | None = None

    def _lines(self) -> Iterator[tuple[int, str]]:
        with self.path.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield lineno, line

    def __len__(self) -> int:
        if self._length is None:
            self._length = sum(1 for _ in self._lines())
        return self._length

    def records(self, start: int = 0) -> Iterator[tuple[str, Record]]:
        for index, (lineno, line) in enumerate(self._lines()):
            if index >= start:
                yield f"{self.path}:{lineno}", line

    def describe(self, index: int) -> str:
        for i, (lineno, _) in enumerate(self._lines()):
            if i == index:
                return f"{self.path}:{lineno}"
        raise IndexError(f"{self.path} has no row {index}")

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def open_source(path: str | Path, what: str = "data path") -> RowSource:
    """The source a data path names; a path that is missing or of no accepted kind raises one line
    that starts with ``what`` (the config key that named it)."""
    text = str(path)
    if text.startswith(HUB_PREFIX):
        from longdraft.data.hub import HubSource

        return HubSource(text)
    p = Path(path)
    if not p.exists():
        raise DataPathError(f"{what} {p} does not exist; expected {ACCEPTED}")
    if p.is_file() and p.suffix == ".parquet":
        from longdraft.data.columnar import parquet_source

        return parquet_source(p, [p])
    if p.is_file():
        return JsonlSource(p)
    from longdraft.data.columnar import folder_source

    return folder_source(p, what)


def check_data_path(path: str | Path, what: str) -> None:
    """Refuse a data path that is missing or of no accepted kind before anything starts: a file or
    folder is opened (metadata only); an ``hf:`` name is parsed and its package checked, not downloaded."""
    if str(path).startswith(HUB_PREFIX):
        from longdraft.data.hub import parse_hub_name

        try:
            parse_hub_name(str(path))
        except UserError as e:
            raise UserError(f"{what} {e}") from None
        require("datasets", f"{what} {path}")
    else:
        open_source(path, what)


def require(module: str, reading: str) -> Any:
    """The optional package ``module``, or one line saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"reading {reading} needs the package '{module.split('.')[0]}', which is not installed; "
            "install longdraft's 'datasets' extra: pip install -e '.[datasets]'"
        ) from None


def without_nulls(value: Any) -> Any:
    """``value`` with every null-valued key of its objects removed: a table has one schema for all its
    rows, so a key that one row lacks is null in every other row, and null stands for "absent"."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def parse_record(location: str, record: Record) -> Row | DataError:
    """One record as a Row, or the DataError that says what is wrong with it at ``location`` (never raises)."""
    if isinstance(record, str):
        return parse_line(location, record)
    try:
        return parse_row(without_nulls(record))
    except DataError as e:
        return e.at(location)


def iter_rows(path: str | Path) -> Iterator[tuple[str, Row | DataError]]:
    """("file:row", Row or DataError) for each row of a data path of any kind, in order."""
    for location, record in open_source(path).records():
        yield location, parse_record(location, record)
