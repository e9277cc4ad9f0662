"""Packed loss masks, JSONL rows (incl. ShareGPT), bad-row errors and skip counts, load_samples."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoTokenizer

from longdraft.data import errors as E
from longdraft.data.dataset import load_samples
from longdraft.data.errors import DataError
from longdraft.data.loss_mask import pack_loss_mask, unpack_loss_mask
from longdraft.data.rows import Conversation, PlainText, iter_jsonl, parse_row
from longdraft.data.tokenize import tokenize_conversation
from longdraft.testing.tiny_target import tiny_rows, write_tiny_jsonl


@pytest.fixture(scope="module")
def tokenizer(tiny_target):
    return AutoTokenizer.from_pretrained(tiny_target(chat_template="chatml"), local_files_only=True)


# ------------------------------------------------------------------ packed masks


def test_pack_example():
    mask = [int(c) for c in "0011100110"]
    assert pack_loss_mask(mask) == [2, 3, 2, 2, 1]
    assert unpack_loss_mask([2, 3, 2, 2, 1]).tolist() == mask
    assert pack_loss_mask([1, 1, 0]) == [0, 2, 1]  # a leading 0-run of length 0
    assert pack_loss_mask([]) == [] and unpack_loss_mask([]).numel() == 0
    assert int(unpack_loss_mask([2, 3, 2, 2, 1]).sum()) == 5


def test_pack_unpack_round_trip_random():
    rng = random.Random(0)
    for n in [1, 2, 5, 17, 100]:
        for _ in range(20):
            bits = [rng.random() < 0.4 for _ in range(n)]
            packed = pack_loss_mask(torch.tensor(bits))
            assert sum(packed) == n and all(r > 0 for r in packed[1:])
            assert unpack_loss_mask(packed, dtype=torch.bool).tolist() == bits
            assert unpack_loss_mask(packed).tolist() == [int(b) for b in bits]


def test_unpack_length_truncates_or_pads_and_slice():
    assert unpack_loss_mask([1, 2], length=5).tolist() == [0, 1, 1, 0, 0]
    assert unpack_loss_mask([1, 2, 3], length=2).tolist() == [0, 1]
    with pytest.raises(ValueError, match="expected 0 or 1"):
        pack_loss_mask([0, 2])
    with pytest.raises(ValueError, match="negative length"):
        unpack_loss_mask([2, -1])


# ------------------------------------------------------------------ rows


def test_sharegpt_rows_are_normalised():
    row = parse_row(
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "Q"},
                {"from": "gpt", "value": "A"},
            ]
        }
    )
    assert row == Conversation(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    )
    same = parse_row(
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A", "extra": 1},
            ]
        }
    )
    assert same == row
    assert parse_row({"text": "hi"}) == PlainText("hi")


def test_sharegpt_file_gives_same_samples_as_role_content(tmp_path, tokenizer):
    a = write_tiny_jsonl(tmp_path / "a.jsonl", num_conversations=6, num_texts=0, sharegpt=False)
    b = write_tiny_jsonl(tmp_path / "b.jsonl", num_conversations=6, num_texts=0, sharegpt=True)
    sa, _ = load_samples(a, tokenizer, 4096)
    sb, _ = load_samples(b, tokenizer, 4096)
    assert [(s.input_ids, s.packed_loss_mask) for s in sa] == [(s.input_ids, s.packed_loss_mask) for s in sb]


BAD_ROWS = [
    ("{not json", E.BAD_JSON, "invalid JSON"),
    ("[1, 2]", E.NOT_AN_OBJECT, "expected a JSON object"),
    ('{"prompt": "x"}', E.MISSING_FIELD, "none of the fields"),
    ('{"conversations": [{"role": "user"}]}', E.MISSING_FIELD, "missing the field 'content'"),
    ('{"conversations": [{"speaker": "user", "text": "x"}]}', E.MISSING_FIELD, "neither 'role'"),
    ('{"conversations": "hello"}', E.BAD_FIELD_TYPE, "expected a list"),
    ('{"conversations": [{"role": "user", "content": 3}]}', E.BAD_FIELD_TYPE, "expected a string"),
    ('{"text": 5}', E.BAD_FIELD_TYPE, "'text' is int"),
    ('{"conversations": [{"role": "wizard", "content": "x"}]}', E.UNKNOWN_ROLE, "unknown role 'wizard'"),
    ('{"conversations": []}', E.EMPTY_CONVERSATION, "empty list"),
    ('{"text": "   "}', E.EMPTY_AFTER_TOKENIZATION, "empty after tokenization"),
]


@pytest.mark.parametrize("line,kind,reason", BAD_ROWS, ids=[k for _, k, _ in BAD_ROWS])
def test_each_bad_row_kind_names_file_line_and_reason(tmp_path, tokenizer, line, kind, reason):
    good = json.dumps({"text": "The quick brown fox."})
    path = tmp_path / "d.jsonl"
    path.write_text(good + "\n\n" + line + "\n" + good + "\n")  # the bad row is on line 3
    with pytest.raises(DataError) as e:
        load_samples(path, tokenizer, 64)
    assert e.value.kind == kind and e.value.location == f"{path}:3"
    assert str(e.value).startswith(f"{path}:3: ") and reason in str(e.value)
    samples, report = load_samples(path, tokenizer, 64, on_bad_row="skip")
    assert [s.sample_id for s in samples] == [f"{path}:1", f"{path}:4"]
    assert report.skipped == {kind: 1} and report.num_rows == 3 and report.num_samples == 2


def test_skip_mode_counts_every_reason(tmp_path, tokenizer):
    lines = [json.dumps(r) for r in tiny_rows(3, 2)] + [line for line, _, _ in BAD_ROWS]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    samples, report = load_samples(path, tokenizer, 4096, on_bad_row="skip")
    expected: dict[str, int] = {}
    for _, kind, _ in BAD_ROWS:
        expected[kind] = expected.get(kind, 0) + 1
    assert dict(report.skipped) == expected and report.num_skipped == len(BAD_ROWS)
    assert len(samples) == 5 and report.num_rows == 5 + len(BAD_ROWS)
    assert "skipped" in report.summary()


def test_iter_jsonl_locations(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n{bad\n')
    got = list(iter_jsonl(path))
    assert [loc for loc, _ in got] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert isinstance(got[2][1], DataError)


# ------------------------------------------------------------------ load_samples


def test_load_samples_masks_truncation_and_counts(tmp_path, tokenizer):
    convo = {
        "conversations": [
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
        ]
    }
    no_assistant = {"conversations": [{"role": "user", "content": "Say hello."}]}
    text = {"text": "The quick brown fox jumps over the lazy dog."}
    path = write_tiny_jsonl(tmp_path / "d.jsonl", rows=[convo, no_assistant, text])
    samples, report = load_samples(path, tokenizer, 4096)
    c, n, t = samples
    ids, mask = tokenize_conversation(tokenizer, convo["conversations"])
    assert c.sample_id == f"{path}:1" and c.input_ids == ids and c.packed_loss_mask == pack_loss_mask(mask)
    assert c.num_loss_tokens == sum(mask) > 0
    assert n.num_loss_tokens == 0 and report.num_without_loss_tokens == 1  # kept, only counted
    assert t.packed_loss_mask == [0, len(t.input_ids)] and t.num_loss_tokens == t.length
    assert report.num_samples == 3 and report.num_truncated == 0
    assert report.num_tokens == sum(s.length for s in samples)
    assert report.num_loss_tokens == sum(s.num_loss_tokens for s in samples)

    short, report = load_samples(path, tokenizer, 8)
    assert all(s.length <= 8 for s in short) and report.num_truncated == 3
    for s, full in zip(short, samples):
        assert s.input_ids == full.input_ids[:8]
        assert unpack_loss_mask(s.packed_loss_mask).tolist() == unpack_loss_mask(full.packed_loss_mask, 8).tolist()

    capped, report = load_samples(path, tokenizer, 4096, max_rows=2)
    assert [s.sample_id for s in capped] == [samples[0].sample_id, samples[1].sample_id]


def test_load_samples_rejects_bad_arguments(tmp_path, tokenizer):
    path = write_tiny_jsonl(tmp_path / "d.jsonl")
    with pytest.raises(ValueError, match="on_bad_row"):
        load_samples(path, tokenizer, 64, on_bad_row="ignore")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_samples(tmp_path / "missing.jsonl", tokenizer, 64)


def test_a_bad_row_error_survives_pickling():
    # Ray sends the controller's exception to the driver pickled; without this it arrives as an
    # "UnserializableException" instead of the row's file:line and reason.
    import pickle

    error = DataError(E.BAD_JSON, "invalid JSON (x at column 2)", "train.jsonl:3")
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), back.kind, back.reason, back.location, str(back)) == (
        DataError,
        E.BAD_JSON,
        "invalid JSON (x at column 2)",
        "train.jsonl:3",
        "train.jsonl:3: invalid JSON (x at column 2)",
    )
