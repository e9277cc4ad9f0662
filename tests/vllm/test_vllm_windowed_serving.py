"""vLLM serves a sliding-window export as trained: a draft with ``model.draft_window`` trained on the
shipped Shakespeare target, decoded by vLLM's EAGLE-3 (greedy), gives the acceptance length of our
own evaluator (whose draft runner applies the window) within 5%; without the window our evaluator
gives a τ further from vLLM's, so vLLM applied it (``layer_types`` + ``sliding_window``).

vLLM's window counts positions, chain entries included: a chain step k sees N - k committed keys,
training and our evaluator N (plus the k diagonal keys), so the two agree best for N >> k."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import vllm  # noqa: F401  (a broken install must fail, not skip)

from longdraft.config import config_from_dict
from longdraft.eval.evaluate import run_speculative_eval
from longdraft.eval.vllm_serve import serve_with_vllm
from longdraft.run import run_training

SHAKESPEARE = Path(__file__).resolve().parents[2] / "examples" / "shakespeare"
PROMPTS, NEW_TOKENS, K, WINDOW = 8, 32, 5, 16


@pytest.mark.timeout(600)
def test_vllm_serves_a_windowed_export_with_our_acceptance_length(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg = config_from_dict(
        {
            "data": {
                "train_path": str(SHAKESPEARE / "data" / "train_text.jsonl"),
                "eval_path": str(SHAKESPEARE / "data" / "heldout_text.jsonl"),
            },
            "model": {"target_path": str(SHAKESPEARE / "target"), "draft_vocab_size": 1024, "draft_window": WINDOW},
            "training": {
                "device": "cpu",
                "max_seq_length": 128,
                "ttt_length": K,
                "batch_size": 8,
                "micro_batch_size": 8,
                "num_steps": 60,
                "lr": 5e-3,
                "warmup_steps": 5,
                "min_lr": 5e-4,
            },
            "eval": {"enabled": True, "num_prompts": PROMPTS, "max_new_tokens": NEW_TOKENS},
            "output": {"dir": str(out), "plot": False},
        }
    )
    run_training(cfg)
    ours = json.loads((out / "eval.json").read_text())["real"]
    export = json.loads((out / "final" / "config.json").read_text())
    assert export["sliding_window"] == WINDOW and export["layer_types"] == ["sliding_attention"]
    assert ours["matches_greedy"] is True and ours["acceptance_length"] > 1.3  # it learned

    full = tmp_path / "full"  # the same weights read as a full-attention draft
    shutil.copytree(out / "final", full)
    config = json.loads((full / "config.json").read_text())
    del config["sliding_window"]
    config.pop("layer_types", None)
    (full / "config.json").write_text(json.dumps(config))
    data = SHAKESPEARE / "data" / "heldout_text.jsonl"
    unwindowed = run_speculative_eval(
        SHAKESPEARE / "target",
        full,
        data,
        num_prompts=PROMPTS,
        max_new_tokens=NEW_TOKENS,
        num_draft_tokens=K,
        device="cpu",
    )
    served = serve_with_vllm(
        SHAKESPEARE / "target",
        out / "final",
        data,
        num_prompts=PROMPTS,
        max_new_tokens=NEW_TOKENS,
        num_draft_tokens=K,
        dtype="fp32",
        check_greedy=True,
    )
    print(
        {
            "ours": ours["acceptance_length"],
            "served": served["acceptance_length"],
            "full": unwindowed["acceptance_length"],
        }
    )
    assert served["matches_greedy"] is True
    assert served["acceptance_length"] == pytest.approx(ours["acceptance_length"], rel=0.05)
    # vLLM applied the window: without it our evaluator gives another τ, further from vLLM's
    assert abs(served["acceptance_length"] - ours["acceptance_length"]) < abs(
        served["acceptance_length"] - unwindowed["acceptance_length"]
    )
