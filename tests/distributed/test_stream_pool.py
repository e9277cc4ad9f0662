"""The training stream with its tokenisation in a process pool: the same stream as in-process, and no
worker left behind."""

import json
import multiprocessing as mp

import pytest
from transformers import AutoTokenizer

from longdraft.data.errors import DataError
from longdraft.data.stream import SampleStream

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tokenizer(tiny_target):
    return AutoTokenizer.from_pretrained(tiny_target(chat_template="chatml"), local_files_only=True)


@pytest.fixture
def mixed(tmp_path):
    """Good text and chat rows, some truncated, with bad rows of three kinds among them."""
    rows = []
    for i in range(29):
        if i % 7 == 3:
            rows.append("{not json")
        elif i % 7 == 5:
            rows.append(json.dumps({"other": i}))
        elif i % 11 == 9:
            rows.append(json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}))
        elif i % 2:
            rows.append(json.dumps({"text": f"row {i} " + "word " * (i % 13)}))
        else:
            messages = [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "a " * i}]
            rows.append(json.dumps({"messages": messages}))
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def _drawn(stream, count):
    """Each sample with the stream's position and epoch after it."""
    out = []
    for _ in range(count):
        s = next(stream)
        out.append((s.sample_id, s.input_ids, s.packed_loss_mask, s.num_loss_tokens, stream.position, stream.epoch))
    return out


def _workers_alive():
    return [p for p in mp.active_children() if p.is_alive()]


def test_a_pooled_stream_equals_the_in_process_one_over_two_epochs_and_leaves_no_worker(mixed, tokenizer):
    options = dict(seed=5, on_bad_row="skip", window=6)
    expected_stream = SampleStream(mixed, tokenizer, 16, **options)
    expected = _drawn(expected_stream, 50)  # 20 good rows of 29 per epoch: into the third epoch
    before = set(_workers_alive())
    pooled = SampleStream(mixed, tokenizer, 16, tokenizer_workers=2, **options)
    assert _drawn(pooled, 50) == expected
    assert pooled.report == expected_stream.report
    assert pooled.report.num_skipped > 0 and pooled.report.num_truncated > 0  # the file exercises both
    assert len(set(_workers_alive()) - before) == 2
    pooled.close()
    assert set(_workers_alive()) - before == set()


def test_a_pooled_stream_opened_at_a_position_continues_exactly(mixed, tokenizer):
    options = dict(seed=1, on_bad_row="skip", window=4)
    whole = _drawn(SampleStream(mixed, tokenizer, 16, **options), 40)
    at = 13  # the 13th sample: mid-window, not at a task boundary
    position = whole[at - 1][4]
    resumed = SampleStream(mixed, tokenizer, 16, position=position, tokenizer_workers=2, **options)
    try:
        assert _drawn(resumed, 40 - at) == whole[at:]
    finally:
        resumed.close()


def test_in_error_mode_the_first_bad_row_raises_the_same_error_and_ends_the_pool(mixed, tokenizer):
    with pytest.raises(DataError) as in_process:
        SampleStream(mixed, tokenizer, 16, seed=2, window=6).take(40)
    before = set(_workers_alive())
    pooled = SampleStream(mixed, tokenizer, 16, seed=2, window=6, tokenizer_workers=2)
    with pytest.raises(DataError) as from_pool:
        pooled.take(40)
    assert str(from_pool.value) == str(in_process.value) and "mixed.jsonl:" in str(from_pool.value)
    assert set(_workers_alive()) - before == set()  # the error finished the stream and its workers


def test_the_prompt_feed_uses_data_tokenizer_workers_and_ends_the_pool_after_the_last_prompt(
    mixed, tiny_target, tokenizer
):
    from longdraft.config import config_from_dict
    from longdraft.pipeline.prompt_feed import FeedSpec, PromptFeed

    def feed(workers):
        cfg = config_from_dict(
            {
                "data": {"train_path": str(mixed), "on_bad_row": "skip", "tokenizer_workers": workers},
                "model": {"target_path": str(tiny_target(chat_template="chatml"))},
                "training": {"max_seq_length": 16, "batch_size": 2, "num_steps": 3, "device": "cpu"},
                "output": {"dir": str(mixed.parent / "out")},
            }
        )
        return PromptFeed(FeedSpec(cfg, 0, 0))

    expected = [(p.sample_id, p.stream_position) for p in feed(0).take(6)]
    before = set(_workers_alive())
    pooled = feed(2)
    assert [(p.sample_id, p.stream_position) for p in pooled.take(6)] == expected
    assert pooled.stream._pool is None and set(_workers_alive()) - before == set()
