"""A run whose data is stored as Parquet and with datasets.save_to_disk trains, evaluates held-out and
measures acceptance exactly as the same run on the same rows in JSONL (CLI end to end)."""

import json

import pytest
import yaml

from longdraft.cli import main
from longdraft.testing.tiny_target import build_tiny_target, tiny_rows
from longdraft.train.metrics_log import read_metrics
from tests.stored_rows import store_every_way

pytest.importorskip("pyarrow")
pytest.importorskip("datasets")


@pytest.mark.timeout(300)
def test_a_run_on_parquet_and_save_to_disk_equals_the_run_on_jsonl(tmp_path):
    build_tiny_target(tmp_path / "target", initializer_range=0.3, seed=1)
    train = store_every_way(tiny_rows(num_conversations=16, num_texts=6), tmp_path / "train")
    held = store_every_way(tiny_rows(num_conversations=4, num_texts=2, seed=1), tmp_path / "held")
    config = {
        "model": {"target_path": str(tmp_path / "target"), "draft_vocab_size": 200},
        "training": {"max_seq_length": 48, "ttt_length": 3, "batch_size": 4, "num_steps": 2, "eval_every": 2},
        "data": {"shuffle_window": 5},
        "eval": {"enabled": True, "num_prompts": 2, "max_new_tokens": 4},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    runs = {}
    for name, train_path, eval_path in [
        ("jsonl", train["jsonl"], held["jsonl"]),
        ("stored", train["parquet_folder"], held["save_to_disk"]),
    ]:
        out = tmp_path / f"out_{name}"
        overrides = [f"data.train_path={train_path}", f"data.eval_path={eval_path}", f"output.dir={out}"]
        assert main(["train", str(tmp_path / "run.yaml"), *overrides]) == 0
        runs[name] = (read_metrics(out), json.loads((out / "eval.json").read_text()))
    (jsonl_steps, jsonl_eval), (stored_steps, stored_eval) = runs["jsonl"], runs["stored"]
    assert len(stored_steps) == 2 and "eval_acc_k" in stored_steps[1]
    for a, b in zip(jsonl_steps, stored_steps):
        assert (a["loss"], a["loss_tokens"], a.get("eval_acc_k")) == (b["loss"], b["loss_tokens"], b.get("eval_acc_k"))
    assert stored_eval["acceptance_length"] == jsonl_eval["acceptance_length"]
