"""The training stream: seeded, reshuffled every epoch, resumable at any row, one window in memory."""

import json
import time
import tracemalloc

import pytest
from transformers import AutoTokenizer

from longdraft.data.errors import DataError
from longdraft.data.stream import NoUsableRows, SampleStream


@pytest.fixture(scope="module")
def tokenizer(tiny_target):
    return AutoTokenizer.from_pretrained(tiny_target(chat_template="chatml"), local_files_only=True)


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _lines(samples):
    return [int(s.sample_id.rsplit(":", 1)[1]) for s in samples]


def test_every_row_once_per_epoch_in_a_new_order_each_epoch(tmp_path, tokenizer):
    path = _write(tmp_path / "d.jsonl", [{"text": f"row number {i}"} for i in range(23)])
    stream = SampleStream(path, tokenizer, 32, seed=3, window=5)
    first, second = _lines(stream.take(23)), _lines(stream.take(23))
    assert sorted(first) == sorted(second) == list(range(1, 24))
    assert first != second and stream.epoch == 1 and stream.position == 46
    # Window-bounded shuffle: row i stays inside its window of 5 rows.
    assert all((line - 1) // 5 == i // 5 for i, line in enumerate(first))
    again = SampleStream(path, tokenizer, 32, seed=3, window=5)
    assert _lines(again.take(46)) == first + second  # a pure function of the seed
    assert _lines(SampleStream(path, tokenizer, 32, seed=4, window=5).take(23)) != first


@pytest.mark.parametrize("position", [0, 1, 4, 5, 22, 23, 37])
def test_a_stream_opened_at_a_position_continues_exactly(tmp_path, tokenizer, position):
    path = _write(tmp_path / "d.jsonl", [{"text": f"row number {i}"} for i in range(23)])
    whole = _lines(SampleStream(path, tokenizer, 32, seed=0, window=4).take(60))
    resumed = SampleStream(path, tokenizer, 32, seed=0, window=4, position=position)
    assert _lines(resumed.take(60 - position)) == whole[position:]
    assert resumed.report.num_rows == 60 - position  # the skipped part was not tokenised


def test_bad_rows_count_as_consumed_and_are_reported(tmp_path, tokenizer):
    path = _write(tmp_path / "d.jsonl", [{"text": "good one"}, "{not json", {"text": "good two"}, {"other": 1}])
    stream = SampleStream(path, tokenizer, 32, seed=0, on_bad_row="skip")
    assert sorted(_lines(stream.take(2))) == [1, 3] and stream.position == 4
    assert dict(stream.report.skipped) == {"bad_json": 1, "missing_field": 1}
    with pytest.raises(DataError, match=r"d.jsonl:\d: "):
        SampleStream(path, tokenizer, 32, seed=0, window=1).take(4)
    all_bad = _write(tmp_path / "bad.jsonl", ["{", "["])
    with pytest.raises(NoUsableRows, match="nothing to train on"):
        SampleStream(all_bad, tokenizer, 32, seed=0, on_bad_row="skip").take(1)
    with pytest.raises(NoUsableRows, match="no rows"):
        SampleStream(_write(tmp_path / "empty.jsonl", []), tokenizer, 32, seed=0).take(1)


def test_max_rows_limits_the_epoch(tmp_path, tokenizer):
    path = _write(tmp_path / "d.jsonl", [{"text": f"row number {i}"} for i in range(10)])
    stream = SampleStream(path, tokenizer, 32, seed=0, max_rows=4)
    assert sorted(_lines(stream.take(4))) == [1, 2, 3, 4] and sorted(_lines(stream.take(4))) == [1, 2, 3, 4]


@pytest.mark.timeout(120)
def test_a_large_file_starts_at_once_and_memory_stays_flat(tmp_path, tokenizer):
    path = tmp_path / "big.jsonl"
    with path.open("w") as f:  # 200,000 rows, ~9 MB
        for i in range(200_000):
            f.write(f'{{"text": "row {i} of a large synthetic file"}}\n')
    start = time.perf_counter()
    stream = SampleStream(path, tokenizer, 32, seed=0, window=256)
    stream.take(1)
    assert time.perf_counter() - start < 2.0
    tracemalloc.start()
    stream.take(2_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20  # one window of raw lines and the samples in hand, not the file
