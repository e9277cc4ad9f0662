"""Row sources over tables: Parquet files (read row group by row group) and the Arrow files of a
``datasets.save_to_disk`` folder (memory-mapped). Only pyarrow is needed, imported when one is opened.

A source is its files in order, each a ``Part`` that knows its row count from metadata and reads its
rows from any row on, ``BATCH_ROWS`` at a time: memory holds one batch (and, for Parquet, the row group
being decoded), never a whole file.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

from longdraft.data.sources import ACCEPTED, DataPathError, Record, RowSource, require

BATCH_ROWS = 256  # rows decoded to Python at once


class Part(ABC):
    name: str
    num_rows: int

    @abstractmethod
    def rows(self, start: int) -> Iterator[dict[str, Any]]:
        """This file's rows from its row ``start`` on."""


class _ParquetPart(Part):
    def __init__(self, path: Path):
        pq = require("pyarrow.parquet", f"{path} (Parquet)")
        try:
            meta = pq.read_metadata(path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
            raise DataPathError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        self.path, self.name, self.num_rows = path, str(path), meta.num_rows
        self._group_starts = [0, *accumulate(meta.row_group(g).num_rows for g in range(meta.num_row_groups))]

    def rows(self, start: int) -> Iterator[dict[str, Any]]:
        import pyarrow.parquet as pq

        if start >= self.num_rows:
            return
        group = bisect_right(self._group_starts, start) - 1  # the row group holding row `start`
        skip = start - self._group_starts[group]
        groups = range(group, len(self._group_starts) - 1)
        with pq.ParquetFile(self.path) as f:
            for batch in f.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, use_threads=False):
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                yield from batch.slice(skip).to_pylist()
                skip = 0


class _ArrowPart(Part):
    """One Arrow IPC stream file of a save_to_disk folder; its batches stay in the memory map."""

    def __init__(self, path: Path):
        require("pyarrow", f"{path} (Arrow)")
        self.path, self.name = path, str(path)
        self.num_rows = self._table().num_rows

    def _table(self) -> Any:
        import pyarrow as pa

        try:
            return pa.ipc.open_stream(pa.memory_map(str(self.path))).read_all()  # zero-copy over the map
        except Exception as e:
            raise DataPathError(f"{self.path}: not a readable Arrow file ({str(e).splitlines()[0]})") from None

    def rows(self, start: int) -> Iterator[dict[str, Any]]:
        table = self._table()
        for first in range(start, self.num_rows, BATCH_ROWS):
            yield from table.slice(first, BATCH_ROWS).to_pylist()


class ColumnarSource(RowSource):
    def __init__(self, name: str, parts: Sequence[Part]):
        self.name, self.parts = name, list(parts)
        self._starts = [0, *accumulate(p.num_rows for p in self.parts)]

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        part = bisect_right(self._starts, index) - 1
        return part, index - self._starts[part]

    def records(self, start: int = 0) -> Iterator[tuple[str, Record]]:
        if start >= len(self):
            return
        first, offset = self._locate(start)
        for part in self.parts[first:]:
            for row_index, row in enumerate(part.rows(offset), start=offset):
                yield f"{part.name}:{row_index}", row
            offset = 0

    def describe(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} has no row {index}")
        part, row = self._locate(index)
        return f"{self.parts[part].name}:{row}"

    @property
    def size_bytes(self) -> int:
        return sum(Path(p.name).stat().st_size for p in self.parts)


def parquet_source(name: Path, files: Sequence[Path]) -> ColumnarSource:
    return ColumnarSource(str(name), [_ParquetPart(f) for f in files])


def folder_source(folder: Path, what: str = "data path") -> ColumnarSource:
    """A save_to_disk folder (its state.json lists the Arrow files) or a folder of Parquet files."""
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        raise DataPathError(
            f"{what} {folder} holds a DatasetDict with the splits {splits}; expected one split's folder, "
            f"e.g. {folder / (splits[0] if splits else 'train')}"
        )
    state = folder / "state.json"
    if state.is_file():
        try:
            files = [folder / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise DataPathError(f"{state}: not a datasets.save_to_disk state file ({e!r})") from None
        return ColumnarSource(str(folder), [_ArrowPart(f) for f in files])
    parquet = sorted(folder.rglob("*.parquet"))
    if not parquet:
        raise DataPathError(
            f"{what} {folder} is a folder with no *.parquet file and no state.json of datasets.save_to_disk; "
            f"expected {ACCEPTED}"
        )
    return parquet_source(folder, parquet)
