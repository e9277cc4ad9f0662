"""One device end to end: a run with training.tokens_per_micro_batch equals the run without it,
step for step (packing changes how a step's samples are laid out, never which samples it trains)."""

import pytest
import yaml

from longdraft.cli import main
from longdraft.testing.tiny_target import build_tiny_target, write_tiny_jsonl
from longdraft.train.metrics_log import read_metrics


@pytest.mark.timeout(300)
def test_packed_run_equals_unpacked_run(tmp_path, monkeypatch):
    import longdraft.train.local_source as local_source

    packed_rows = []  # the documents of every packed micro-batch the source built
    build = local_source.packed_sequence_batch

    def spy(documents, masks, ttt_length):
        batch = build(documents, masks, ttt_length)
        packed_rows.append(batch.documents[0] if batch.documents else (batch.lengths[0],))
        return batch

    monkeypatch.setattr(local_source, "packed_sequence_batch", spy)
    build_tiny_target(tmp_path / "target", initializer_range=0.3, seed=1)
    write_tiny_jsonl(tmp_path / "train.jsonl", num_conversations=16, num_texts=8)
    write_tiny_jsonl(tmp_path / "eval.jsonl", num_conversations=4, num_texts=2, seed=1)
    config = {
        "data": {"train_path": "train.jsonl", "eval_path": "eval.jsonl"},
        "model": {"target_path": "target", "draft_vocab_size": 200},
        "training": {
            "max_seq_length": 48,
            "ttt_length": 3,
            "batch_size": 6,
            "num_steps": 3,
            "lr": 3e-3,
            "eval_every": 3,
        },
        "output": {"dir": "out"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    runs = {}
    for name, extra in (("unpacked", []), ("packed", ["training.tokens_per_micro_batch=100"])):
        out = tmp_path / name
        assert main(["train", str(tmp_path / "run.yaml"), f"output.dir={out}", *extra]) == 0
        runs[name] = read_metrics(out)
    unpacked, packed = runs["unpacked"], runs["packed"]
    assert any(len(docs) > 1 for docs in packed_rows) and all(sum(d) <= 100 or len(d) == 1 for d in packed_rows)
    assert [r["step"] for r in packed] == [r["step"] for r in unpacked] == [1, 2, 3]
    for a, b in zip(unpacked, packed):
        assert a["count_k"] == b["count_k"] and a["samples"] == b["samples"] and a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
        assert max(abs(x - y) for x, y in zip(a["acc_k"], b["acc_k"])) < 1e-5
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-5 * max(1.0, a["grad_norm"])
        assert sum(b["attention_pairs"]) == sum(a["attention_pairs"])  # the same work, laid out otherwise
    assert abs(unpacked[-1]["eval_loss"] - packed[-1]["eval_loss"]) < 1e-5
