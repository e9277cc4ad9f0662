"""The same rows stored every way a data path accepts: JSONL, one Parquet file (small row groups, so
reads seek across them), a folder of Parquet files, a ``datasets.save_to_disk`` folder of several shards."""

from __future__ import annotations

import json
from pathlib import Path


def mixed_rows(count: int) -> list[dict]:
    """Chat rows (role/content and ShareGPT) and text rows: a table of them has null cells in every row."""
    rows = []
    for i in range(count):
        if i % 3 == 0:
            rows.append({"text": f"row {i} " + "word " * (i % 7)})
        elif i % 3 == 1:
            rows.append(
                {"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "a " * i}]}
            )
        else:
            rows.append({"conversations": [{"from": "human", "value": f"h {i}"}, {"from": "gpt", "value": f"g {i}"}]})
    return rows


def _table(rows: list[dict]):
    import pyarrow as pa

    keys = sorted({k for r in rows for k in r})
    return pa.table({k: pa.array([r.get(k) for r in rows]) for k in keys})


def _split(count: int, parts: int) -> list[tuple[int, int]]:
    edges = [count * p // parts for p in range(parts + 1)]
    return list(zip(edges, edges[1:]))


def store_every_way(rows: list[dict], folder: Path, parts: int = 3) -> dict[str, Path]:
    """{kind: path} of ``rows`` stored as jsonl, parquet (one file), parquet_folder and save_to_disk."""
    import datasets
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    folder.mkdir(parents=True, exist_ok=True)
    table = _table(rows)
    paths = {"jsonl": folder / "rows.jsonl", "parquet": folder / "rows.parquet"}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(table, paths["parquet"], row_group_size=4)
    paths["parquet_folder"] = folder / "shards"
    for n, (a, b) in enumerate(_split(len(rows), parts)):  # nested: the folder is read recursively, in path order
        (paths["parquet_folder"] / f"part{n}").mkdir(parents=True)
        pq.write_table(table.slice(a, b - a), paths["parquet_folder"] / f"part{n}" / "rows.parquet", row_group_size=3)
    paths["save_to_disk"] = folder / "saved"
    datasets.Dataset(InMemoryTable(table)).save_to_disk(str(paths["save_to_disk"]), num_shards=parts)
    return paths
