"""Data paths stored as users store them: JSONL, Parquet (a file, a folder), a save_to_disk folder, hf:.
The same rows give the same training stream whatever the storage, every error names file:row, and no
kind is read whole into memory."""

import json
import subprocess
import sys
import textwrap

import pytest
from transformers import AutoTokenizer

from longdraft.data.dataset import load_samples
from longdraft.data.errors import DataError
from longdraft.data.hub import parse_hub_name
from longdraft.data.sources import check_data_path, open_source
from longdraft.data.stream import SampleStream
from longdraft.errors import UserError
from tests.stored_rows import _table, mixed_rows, store_every_way

pytest.importorskip("pyarrow")
pytest.importorskip("datasets")

KINDS = ("jsonl", "parquet", "parquet_folder", "save_to_disk")


@pytest.fixture(scope="module")
def tokenizer(tiny_target):
    return AutoTokenizer.from_pretrained(tiny_target(chat_template="chatml"), local_files_only=True)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    return store_every_way(mixed_rows(23), tmp_path_factory.mktemp("stored"))


def _drawn(stream, count):
    """(row index in the source, tokens, packed mask, position, epoch) of each sample drawn."""
    index = {stream.source.describe(i): i for i in range(len(stream.source))}
    out = []
    for _ in range(count):
        s = next(stream)
        out.append((index[s.sample_id], s.input_ids, s.packed_loss_mask, stream.position, stream.epoch))
    return out


def test_every_kind_gives_the_same_seeded_stream_over_three_epochs(stored, tokenizer):
    streams = {kind: _drawn(SampleStream(stored[kind], tokenizer, 24, seed=7, window=5), 60) for kind in KINDS}
    assert all(streams[kind] == streams["jsonl"] for kind in KINDS)
    rows = [r[0] for r in streams["jsonl"]]
    assert sorted(rows[:23]) == list(range(23)) and rows[:23] != rows[23:46]  # each epoch its own order


@pytest.mark.parametrize("kind", KINDS[1:])
@pytest.mark.parametrize("position", [3, 7, 22, 41])
def test_every_kind_resumes_at_the_same_row(stored, tokenizer, kind, position):
    whole = _drawn(SampleStream(stored["jsonl"], tokenizer, 24, seed=2, window=5), 50)
    resumed = SampleStream(stored[kind], tokenizer, 24, seed=2, window=5, position=position)
    assert _drawn(resumed, 50 - position) == whole[position:]
    assert resumed.report.num_rows == 50 - position  # the rows before `position` were not tokenised


def test_max_rows_counts_across_the_files_of_a_folder(stored, tokenizer):
    whole = _drawn(SampleStream(stored["jsonl"], tokenizer, 24, seed=0, max_rows=12), 40)
    stream = SampleStream(stored["parquet_folder"], tokenizer, 24, seed=0, max_rows=12, position=30)
    assert _drawn(stream, 10) == whole[30:] and stream.rows_per_epoch == 12
    assert {row for row, *_ in whole[:12]} == set(range(12))


def test_held_out_samples_are_the_same_from_every_kind(stored, tokenizer):
    expected = [(s.input_ids, s.packed_loss_mask) for s in load_samples(stored["jsonl"], tokenizer, 24)[0]]
    for kind in KINDS[1:]:
        samples, report = load_samples(stored[kind], tokenizer, 24)
        assert [(s.input_ids, s.packed_loss_mask) for s in samples] == expected and report.num_rows == 23


def test_a_bad_row_in_a_parquet_folder_names_its_file_and_row(tmp_path, tokenizer):
    rows = mixed_rows(9)
    rows[5] = {"messages": [{"role": "wizard", "content": "hi"}]}
    folder = store_every_way(rows, tmp_path)["parquet_folder"]  # rows 3..5 are the second file's 0..2
    with pytest.raises(DataError) as error:
        SampleStream(folder, tokenizer, 24, seed=0).take(9)
    assert str(error.value).startswith(f"{folder / 'part1' / 'rows.parquet'}:2: message 0 has unknown role 'wizard'")
    stream = SampleStream(folder, tokenizer, 24, seed=0, on_bad_row="skip")
    stream.take(8)
    assert dict(stream.report.skipped) == {"unknown_role": 1} and stream.position == 9


def test_null_cells_of_a_table_read_as_absent_keys(tmp_path, tokenizer):
    """A table gives every row every column: a text row has messages = null, which must not be a bad row."""
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(_table([{"text": "plain words"}, {"messages": [{"role": "user", "content": "q"}]}]), path)
    samples, report = load_samples(path, tokenizer, 24)
    assert len(samples) == 2 and not report.skipped


def test_paths_of_no_accepted_kind_are_refused_in_one_line(tmp_path, stored):
    cases = {
        tmp_path / "missing.jsonl": "does not exist; expected a file (JSONL or Parquet), a folder",
        tmp_path / "empty": "is a folder with no *.parquet file and no state.json of datasets.save_to_disk",
    }
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.parquet").write_text("not parquet")
    cases[tmp_path / "bad.parquet"] = "bad.parquet: not a readable Parquet file"
    for path, expected in cases.items():
        with pytest.raises(UserError) as error:
            check_data_path(path, "data.train_path")
        assert expected in str(error.value) and "\n" not in str(error.value)
    import datasets

    splits = stored["save_to_disk"].parent / "dict"
    datasets.DatasetDict(train=datasets.load_from_disk(str(stored["save_to_disk"]))).save_to_disk(str(splits))
    with pytest.raises(UserError, match=r"holds a DatasetDict with the splits \['train'\]; expected one split's"):
        open_source(splits)


def test_a_missing_optional_package_names_the_extra(stored, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # importing it now raises ImportError
    with pytest.raises(
        UserError, match=r"needs the package 'pyarrow', which is not installed; install longdraft's 'datasets' extra"
    ):
        open_source(stored["parquet"])


@pytest.mark.parametrize(
    "name,expected",
    [
        ("hf:org/name", ("org/name", "train")),
        ("hf:org/name:test", ("org/name", "test")),
        ("hf:squad", ("squad", "train")),
        ("hf:HuggingFaceH4/ultrachat_200k:train_sft", ("HuggingFaceH4/ultrachat_200k", "train_sft")),
        ("hf:org/name:train[:100]", ("org/name", "train[:100]")),
    ],
)
def test_hub_names_are_parsed(name, expected):
    assert parse_hub_name(name) == expected


@pytest.mark.parametrize("name", ["hf:", "hf:org/na me", "hf:a/b/c", "hf:org/name:", "hf:org/name:a:b"])
def test_malformed_hub_names_are_refused_before_anything_loads(name):
    with pytest.raises(UserError, match="is not a Hugging Face dataset name; expected hf:org/name"):
        check_data_path(name, "data.train_path")


def test_offline_a_hub_dataset_not_in_the_cache_is_one_clear_line(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    with pytest.raises(UserError) as error:
        open_source("hf:longdraft-tests/no-such-dataset:train")
    message = str(error.value)
    assert message.startswith("hf:longdraft-tests/no-such-dataset:train: cannot load split 'train'"), message
    assert "HF_HUB_OFFLINE is set" in message and "\n" not in message


def test_a_local_folder_loads_through_the_hub_path_as_the_same_stream(stored, tokenizer, monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    name = f"hf:{stored['parquet_folder']}:train"
    stream = SampleStream(name, tokenizer, 24, seed=7, window=5, position=4)
    expected = _drawn(SampleStream(stored["jsonl"], tokenizer, 24, seed=7, window=5), 30)[4:]
    assert _drawn(stream, 26) == expected
    assert stream.source.describe(5) == f"hf:{stored['parquet_folder']}:train:5"


def test_config_keeps_a_hub_name_as_written_and_resolves_files(tmp_path):
    from longdraft.config import load_config

    (tmp_path / "run.yaml").write_text(
        "data:\n  train_path: hf:org/chats:train_sft\n  eval_path: held.parquet\n"
        "model:\n  target_path: t\noutput:\n  dir: o\n"
    )
    cfg = load_config(tmp_path / "run.yaml", [])
    assert cfg.data.train_path == "hf:org/chats:train_sft"
    assert cfg.data.eval_path == str(tmp_path / "held.parquet")


@pytest.mark.timeout(120)
def test_large_tables_are_read_a_row_group_at_a_time(tmp_path):
    """Arrow's own allocator, measured in a fresh process: reading the middle of a 200,000-row Parquet
    file and of a save_to_disk folder peaks far below the size of the decoded table."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    table = pa.table({"text": [f"row {i} of a large synthetic table, some words" for i in range(200_000)]})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=2_000)
    datasets.Dataset(InMemoryTable(table)).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    script = textwrap.dedent(
        f"""
        import json, pyarrow as pa
        from longdraft.data.sources import open_source
        peaks = []
        for path in ({str(tmp_path / "big.parquet")!r}, {str(tmp_path / "saved")!r}):
            rows = open_source(path).records(150_000)
            first = next(rows)
            peaks.append((first[0], sum(1 for _ in rows), pa.default_memory_pool().max_memory()))
        print(json.dumps(peaks))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    (parquet, p_rest, p_peak), (arrow, a_rest, a_peak) = json.loads(out)
    assert parquet.endswith("big.parquet:150000") and arrow.endswith("data-00001-of-00002.arrow:50000")
    assert p_rest == a_rest == 49_999
    assert max(p_peak, a_peak) < table.nbytes / 10, (p_peak, a_peak, table.nbytes)
