"""The tokenizer pool over a table: its rows (dicts, not JSONL lines) reach the workers and come back as
the same stream as JSONL in-process, resumed at the same row."""

import pytest
from transformers import AutoTokenizer

from longdraft.data.stream import SampleStream
from tests.stored_rows import mixed_rows, store_every_way

pytestmark = pytest.mark.timeout(180)
pytest.importorskip("pyarrow")
pytest.importorskip("datasets")


def _drawn(stream, count):
    out = []
    for _ in range(count):
        s = next(stream)
        out.append((s.input_ids, s.packed_loss_mask, s.num_loss_tokens, stream.position, stream.epoch))
    return out


def test_a_pooled_stream_over_a_parquet_folder_equals_jsonl_in_process(tmp_path, tiny_target):
    tokenizer = AutoTokenizer.from_pretrained(tiny_target(chat_template="chatml"), local_files_only=True)
    rows = mixed_rows(17)
    rows[9] = {"messages": [{"role": "wizard", "content": "hi"}]}
    stored = store_every_way(rows, tmp_path)
    options = dict(seed=4, on_bad_row="skip", window=5)
    expected = _drawn(SampleStream(stored["jsonl"], tokenizer, 16, **options), 40)
    in_process = SampleStream(stored["jsonl"], tokenizer, 16, position=6, **options)
    _drawn(in_process, 34)
    pooled = SampleStream(stored["parquet_folder"], tokenizer, 16, tokenizer_workers=2, position=6, **options)
    try:
        assert _drawn(pooled, 34) == expected[6:]
        assert pooled.report.skipped == in_process.report.skipped and pooled.report.num_skipped > 0
        assert pooled.report.num_tokens == in_process.report.num_tokens
    finally:
        pooled.close()
