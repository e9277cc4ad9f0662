"""The pipeline with vLLM producers writing shards straight into Mooncake from vLLM's worker: the
training steps equal those of the same run with HF producers, nothing is left in the store, and
each rank reads only its own share."""

import json

import pytest

from longdraft.config import config_from_dict
from longdraft.pipeline.launch import run_pipeline
from longdraft.testing.tiny_target import tiny_rows, write_tiny_jsonl
from longdraft.train.metrics_log import read_metrics


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vllm_pipeline") / "train.jsonl"
    write_tiny_jsonl(path, tiny_rows(num_conversations=12, num_texts=3, seed=3))
    return path


def _run(target, train_file, out, engine, u, r, **training):
    cfg = config_from_dict(
        {
            "data": {"train_path": str(train_file)},
            "model": {"target_path": str(target), "draft_vocab_size": 200, "target_dtype": "fp32"},
            "training": {
                "max_seq_length": 40,
                "ttt_length": 3,
                "batch_size": 4,
                "micro_batch_size": 1,
                "num_steps": 4,
                "lr": 3e-3,
                "seed": 0,
                "num_trainers": u * r,
                "sp_ulysses_size": u,
                "sp_ring_size": r,
                "device": "cpu",
                **training,
            },
            "inference": {"engine": engine, "batch_size": 4},
            "store": {"backend": "mooncake", "mooncake": {"global_segment_size_mb": 16, "local_buffer_size_mb": 16}},
            "output": {"dir": str(out), "plot": False},
            "cluster": {"run_timeout_s": 240},
        }
    )
    run_pipeline(cfg, None)
    return read_metrics(out), json.loads((out / "summary.json").read_text()), out


@pytest.fixture(scope="module")
def hf_run(ray_session, vllm_target, train_file, tmp_path_factory):
    return _run(vllm_target, train_file, tmp_path_factory.mktemp("hf") / "run", "hf", 2, 1)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("u,r", [(2, 1), (2, 2)])
def test_vllm_producers_train_like_hf_producers(ray_session, vllm_target, train_file, tmp_path, hf_run, u, r):
    want, want_summary, _ = hf_run
    got, summary, out = _run(vllm_target, train_file, tmp_path / "run", "vllm", u, r)
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-4), g["step"]
        assert g["loss_k"] == pytest.approx(w["loss_k"], rel=1e-4)
        assert g["count_k"] == w["count_k"] and g["samples"] == w["samples"]
    assert summary["lost"] == 0 and summary["trained"] == want_summary["trained"]
    assert summary["keys_left"] == 0
    producer = summary["producers"][0]
    # The worker put every shard (counted for the producer); the trainers read and deleted each one.
    ranks = [json.loads((out / "ranks" / f"rank{n}.json").read_text()) for n in range(u * r)]
    assert producer["store"]["keys_put"] == sum(rank["keys_deleted"] for rank in ranks) > 0
    assert producer["tokens_per_s"] > 0
    assert (
        producer["written_by_engine"] == producer["samples"] > 0
        and want_summary["producers"][0]["written_by_engine"] == 0
    )
    for rank in ranks:
        share = rank["rows_read"] / rank["sample_rows"]  # (C + K) of every L rows
        assert share < 1.0 / (u * r) + 0.35
        assert rank["bytes_read"] / rank["full_sample_bytes"] == pytest.approx(share, abs=0.03)


@pytest.mark.timeout(300)
def test_packed_vllm_producers_hand_the_features_back_and_train_like_hf(
    ray_session, vllm_target, train_file, tmp_path, hf_run
):
    """With ``training.tokens_per_micro_batch`` each document is its own vLLM request, handed back to
    the producer, which packs them and puts the shards (the worker's writer splits one request's
    sequence only): the steps equal the unpacked HF run's."""
    want, want_summary, _ = hf_run
    got, summary, _ = _run(vllm_target, train_file, tmp_path / "run", "vllm", 2, 1, tokens_per_micro_batch=120)
    for g, w in zip(got, want, strict=True):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-4), g["step"]
        assert g["count_k"] == w["count_k"] and g["samples"] == w["samples"]
    assert summary["lost"] == 0 and summary["trained"] == want_summary["trained"] and summary["keys_left"] == 0
    producer = summary["producers"][0]
    assert producer["written_by_engine"] == 0 and summary["packed_micro_batches"] < summary["trained"]
