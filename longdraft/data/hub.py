"""``hf:org/name[:split]``: a Hugging Face dataset as a row source.

``datasets.load_dataset`` downloads and prepares it once into the Hugging Face cache (Arrow files it
memory-maps); rows are then read from that table a batch at a time, like a save_to_disk folder. Where
the network is closed (``HF_HUB_OFFLINE=1``) only a dataset already in the cache loads. The name may
also be a local folder that ``load_dataset`` reads (``hf:/data/chats:train``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longdraft.data.columnar import BATCH_ROWS, ColumnarSource, Part
from longdraft.data.sources import HUB_PREFIX, require
from longdraft.errors import UserError

DEFAULT_SPLIT = "train"
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_SPLIT = re.compile(r"[\w.-]+(\[[\w:%+-]*\])?")  # a split name, optionally sliced: train[:1000]


def parse_hub_name(text: str) -> tuple[str, str]:
    """("org/name", split) of ``hf:org/name[:split]``; anything else raises one line."""
    body = text[len(HUB_PREFIX) :] if text.startswith(HUB_PREFIX) else text
    repo, split = body, DEFAULT_SPLIT
    head, sep, tail = body.partition(":")  # the first colon: a split may be sliced, train[:1000]
    if sep:
        repo, split = head, tail
    local = repo.startswith(("/", ".", "~")) and Path(repo).expanduser().is_dir()
    if not (local or _REPO.fullmatch(repo)) or not _SPLIT.fullmatch(split):
        raise UserError(
            f"{text!r} is not a Hugging Face dataset name; expected hf:org/name or hf:org/name:split "
            "(e.g. hf:HuggingFaceH4/ultrachat_200k:train_sft), or hf:/a/local/folder[:split]"
        )
    return repo, split


class _DatasetPart(Part):
    def __init__(self, name: str, dataset: Any):
        self.name, self.num_rows = name, len(dataset)
        self._table = dataset.with_format("arrow")  # slices are pyarrow tables over the memory-mapped cache

    def rows(self, start: int) -> Iterator[dict[str, Any]]:
        for first in range(start, self.num_rows, BATCH_ROWS):
            yield from self._table[first : first + BATCH_ROWS].to_pylist()


def _load(repo: str, split: str, text: str) -> Any:
    datasets = require("datasets", text)
    try:
        return datasets.load_dataset(str(Path(repo).expanduser()) if repo.startswith("~") else repo, split=split)
    except Exception as e:  # datasets raises many kinds (offline, not found, bad split): all are one line here
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        hint = "; HF_HUB_OFFLINE is set, so only a dataset already in the Hugging Face cache loads" if offline else ""
        raise UserError(f"{text}: cannot load split {split!r} of {repo!r}: {reason}{hint}") from None


class HubSource(ColumnarSource):
    def __init__(self, text: str):
        repo, split = parse_hub_name(text)
        name = f"{HUB_PREFIX}{repo}:{split}"
        super().__init__(name, [_DatasetPart(name, _load(repo, split, text))])

    @property
    def size_bytes(self) -> int:
        return 0
