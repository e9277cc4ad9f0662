"""vLLM serves what we export: a draft trained 120 steps (about 40 s) for the shipped Shakespeare target, on
non-default target layers, decoded by vLLM's EAGLE-3 speculative decoding (greedy) on the held-out
prompts of our own evaluator: same output as greedy decoding, acceptance length within 5%."""

import json
import shutil
from pathlib import Path

import pytest
import vllm  # noqa: F401  (a broken install must fail, not skip)

from longdraft.config import config_from_dict
from longdraft.eval.vllm_serve import serve_with_vllm
from longdraft.run import run_training

SHAKESPEARE = Path(__file__).resolve().parents[2] / "examples" / "shakespeare"
AUX_LAYERS = [0, 6, 7]  # far from vLLM's default for 8 layers (its ids 2, 4, 5 = our 1, 3, 4)
PROMPTS, NEW_TOKENS, K = 8, 32, 7


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "run"
    cfg = config_from_dict(
        {
            "data": {
                "train_path": str(SHAKESPEARE / "data" / "train_text.jsonl"),
                "eval_path": str(SHAKESPEARE / "data" / "heldout_text.jsonl"),
            },
            "model": {"target_path": str(SHAKESPEARE / "target"), "draft_vocab_size": 1024, "aux_layers": AUX_LAYERS},
            "training": {
                "device": "cpu",
                "max_seq_length": 128,
                "ttt_length": K,
                "batch_size": 8,
                "micro_batch_size": 8,
                "num_steps": 120,
                "lr": 5e-3,
                "warmup_steps": 10,
                "min_lr": 5e-4,
                "eval_every": 1000,
            },
            "eval": {"enabled": True, "num_prompts": PROMPTS, "max_new_tokens": NEW_TOKENS},
            "output": {"dir": str(out), "plot": False},
        }
    )
    run_training(cfg)
    return out, json.loads((out / "eval.json").read_text())["real"]


def _serve(draft_dir):
    return serve_with_vllm(
        SHAKESPEARE / "target",
        draft_dir,
        SHAKESPEARE / "data" / "heldout_text.jsonl",
        num_prompts=PROMPTS,
        max_new_tokens=NEW_TOKENS,
        num_draft_tokens=K,
        dtype="fp32",
        check_greedy=True,
    )


@pytest.mark.timeout(420)
def test_vllm_serves_the_export_with_our_acceptance_length(trained, tmp_path):
    out, ours = trained
    export = json.loads((out / "final" / "config.json").read_text())
    assert export["eagle_aux_hidden_state_layer_ids"] == [i + 1 for i in AUX_LAYERS]  # vLLM numbering
    assert export["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == AUX_LAYERS  # SGLang numbering
    assert ours["matches_greedy"] is True and ours["acceptance_length"] > 1.3  # it learned: the match means something

    served = _serve(out / "final")
    assert served["matches_greedy"] is True
    assert served["acceptance_length"] == pytest.approx(ours["acceptance_length"], rel=0.05)
    assert served["verify_steps"] > 0 and len(served["accept_rate_per_position"]) == K

    # Without the layer ids vLLM feeds the draft its default layers: the acceptance length falls.
    stripped = tmp_path / "stripped"
    shutil.copytree(out / "final", stripped)
    config = json.loads((stripped / "config.json").read_text())
    del config["eagle_aux_hidden_state_layer_ids"], config["eagle_config"]
    (stripped / "config.json").write_text(json.dumps(config))
    wrong = _serve(stripped)
    assert wrong["acceptance_length"] < 0.9 * served["acceptance_length"], (wrong["acceptance_length"], served)
