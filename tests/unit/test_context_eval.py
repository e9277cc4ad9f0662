"""Acceptance by context length: prompts of exact lengths cut inside held-out documents, the
per-length reports, and the refusals of lengths the target cannot take."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longdraft.config import config_from_dict
from longdraft.errors import UserError
from longdraft.eval.cli import main as eval_main
from longdraft.eval.context import check_context_fits, run_context_eval
from longdraft.eval.context_prompts import context_prompts, cut_points, document_ids
from longdraft.model.draft import Eagle3Draft
from longdraft.model.draft_config import draft_config_from_target
from longdraft.run import run_training
from longdraft.testing.tiny_target import SENTENCES, build_tiny_target, write_tiny_jsonl
from longdraft.train.export import export_draft

BOS = 1


def _docs():
    # Three documents of 50, 120 and 300 tokens; values encode (document, position).
    return [
        (f"d.jsonl:{i + 1}", [BOS] + [1000 * (i + 1) + p for p in range(1, n)]) for i, n in enumerate((50, 120, 300))
    ]


def test_prompts_have_the_exact_length_and_end_at_a_cut_inside_a_document():
    docs = _docs()
    prompts = context_prompts(docs, 64, num_prompts=6, tail=16, bos_id=BOS)
    assert len(prompts) == 6 and all(len(p.input_ids) == 64 for p in prompts)
    by_loc = dict(docs)
    for p in prompts:
        loc, cut = p.prompt_id.rsplit("@", 1)
        ids, cut = by_loc[loc], int(cut)
        assert 64 <= cut <= len(ids) - 16  # the document goes on after the prompt
        assert p.input_ids[1:] == ids[cut - 63 : cut] and p.input_ids[0] == BOS  # BOS kept, then the text
    assert {p.prompt_id.split("@")[0] for p in prompts} == {"d.jsonl:2", "d.jsonl:3"}  # 50 < 64 + 16
    assert len({p.prompt_id for p in prompts}) == 6  # no prompt twice
    # one cut from each document in turn
    assert [p.prompt_id.split("@")[0] for p in prompts[:2]] == ["d.jsonl:2", "d.jsonl:3"]


def test_cut_points_are_spread_and_distinct():
    assert cut_points(300, 64, 16, 3) == [64, 174, 284]
    assert cut_points(80, 64, 16, 5) == [64]
    assert cut_points(79, 64, 16, 5) == []


def test_no_document_long_enough_is_refused_with_the_sizes():
    with pytest.raises(ValueError, match=r"no document has the 512 \+ 16 tokens .* the longest has 300"):
        context_prompts(_docs(), 512, num_prompts=4, tail=16, bos_id=BOS)


def test_lengths_past_the_target_positions_are_refused():
    check_context_fits([256, 1024], 64, 7, 2048)
    with pytest.raises(
        ValueError,
        match=r"context length 2000: 2000 prompt \+ 64 new \+ 7 draft tokens = 2071 "
        r"positions, more than the target's max_position_embeddings = 2048",
    ):
        check_context_fits([256, 2000], 64, 7, 2048)


@pytest.fixture(scope="module")
def long_docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("context")
    target = build_tiny_target(root / "target", initializer_range=0.3, max_position_embeddings=512)
    text = " ".join(SENTENCES * 4)
    data = write_tiny_jsonl(root / "heldout.jsonl", rows=[{"text": text}, {"text": text[::-1]}])
    model = AutoModelForCausalLM.from_pretrained(target, local_files_only=True)
    torch.manual_seed(0)
    draft = Eagle3Draft(draft_config_from_target(model.config), model.get_input_embeddings().weight.detach())
    export = export_draft(draft, root / "draft")
    return root, target, data, export


@pytest.mark.timeout(120)
def test_one_report_per_context_length_with_exact_prompt_sizes(long_docs):
    torch.set_num_threads(1)
    _, target, data, export = long_docs
    tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
    assert min(len(ids) for _, ids in document_ids(data, tokenizer)) > 200
    report = run_context_eval(
        target,
        export,
        data,
        [128, 32],
        num_prompts=3,
        max_new_tokens=8,
        num_draft_tokens=3,
        device="cpu",
        check_greedy=True,
    )
    assert report["context_lengths"] == [32, 128]
    for row, n in zip(report["by_length"], [32, 128]):
        assert row["context_length"] == n and row["num_prompts"] == 3 and row["prompt_tokens"] == 3 * n
        assert row["matches_greedy"] is True and 1.0 <= row["acceptance_length"] <= 4.0
        assert len(row["accept_rate_per_position"]) == 3


@pytest.mark.timeout(120)
def test_cli_context_lengths(long_docs, capsys, tmp_path):
    root, target, data, export = long_docs
    rc = eval_main(
        [
            "--target",
            str(target),
            "--draft",
            str(export),
            "--data",
            str(data),
            "--context-lengths",
            "32,64",
            "--num-prompts",
            "2",
            "--max-new-tokens",
            "4",
            "--num-steps",
            "2",
            "--device",
            "cpu",
            "--json",
            "--plot",
            str(tmp_path / "ctx.png"),
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["context_length"] for r in report["by_length"]] == [32, 64]
    assert (tmp_path / "ctx.png").stat().st_size > 0
    with pytest.raises(UserError, match=r"argument --context-lengths: '1': expected comma-separated token counts >= 2"):
        eval_main(["--target", str(target), "--draft", str(export), "--data", str(data), "--context-lengths", "1"])


def test_training_refuses_context_lengths_the_target_cannot_take_before_it_starts(long_docs, tmp_path):
    root, target, data, _ = long_docs
    cfg = config_from_dict(
        {
            "data": {"train_path": str(data)},
            "model": {"target_path": str(target)},
            "training": {"max_seq_length": 32, "num_steps": 1, "device": "cpu"},
            "eval": {"enabled": True, "context_lengths": [64, 500]},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        }
    )
    with pytest.raises(
        UserError,
        match=r"eval.context_lengths: context length 500: .* more than the target's "
        r"max_position_embeddings = 512",
    ):
        run_training(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any training
