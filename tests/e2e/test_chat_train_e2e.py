"""The Qwen3 multi-turn thinking conversation of the tests trains, with exactly
its assistant tokens carrying loss (one device, through the CLI)."""

import json

import pytest
import torch
import yaml

from longdraft.cli import main
from longdraft.testing.chat_templates import family_tokenizer
from longdraft.testing.tiny_target import build_tiny_target
from longdraft.train.metrics_log import read_metrics
from tests.unit.test_chat_families import EXPECTED, FOLLOW_UP


@pytest.mark.timeout(240)
def test_the_qwen3_thinking_conversation_trains_on_exactly_its_assistant_tokens(tmp_path):
    torch.set_num_threads(1)
    target = build_tiny_target(tmp_path / "target", initializer_range=0.3, seed=1)
    tok = family_tokenizer(target, "qwen3")
    tok.save_pretrained(target)  # the same vocabulary with Qwen3's template
    (tmp_path / "train.jsonl").write_text((json.dumps({"messages": FOLLOW_UP}) + "\n") * 6)
    config = {
        "data": {"train_path": "train.jsonl", "on_bad_row": "skip"},
        "model": {"target_path": "target", "draft_vocab_size": tok.vocab_size},  # every argmax is drafted
        "training": {"max_seq_length": 4096, "ttt_length": 2, "batch_size": 2, "micro_batch_size": 2, "num_steps": 3},
        "output": {"dir": "out"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    records = read_metrics(tmp_path / "out")
    # Step 0 trains every position whose loss mask is set (each has a target: the conversation ends
    # with a newline after <|im_end|>): two conversations a step, the tokens of their assistant parts.
    per_conversation = sum(
        len(tok(part, add_special_tokens=False)["input_ids"]) for part in EXPECTED["qwen3", "follow_up"]
    )
    assert [r["loss_tokens"] for r in records] == [2 * per_conversation] * 3
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert not any(k.startswith("bad_row") for k in summary["samples_skipped"])
