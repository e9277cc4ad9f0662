"""A bf16 target gives a bf16 export (``torch_dtype``/``dtype`` bfloat16, bf16 weights), as SGLang and
vLLM load drafts in the target's dtype, and vLLM serves it with EAGLE-3 on the bf16 target (a
3-step draft: a bf16 target trains at about 25 s/step on this CPU; acceptance is not the point here)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import vllm  # noqa: F401  (a broken install must fail, not skip)
from safetensors.torch import load_file

from longdraft.config import config_from_dict
from longdraft.eval.vllm_serve import serve_with_vllm
from longdraft.run import run_training

SHAKESPEARE = Path(__file__).resolve().parents[2] / "examples" / "shakespeare"


def _bf16_target(out: Path) -> Path:
    from transformers import AutoModelForCausalLM

    shutil.copytree(SHAKESPEARE / "target", out)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    return out


@pytest.mark.timeout(600)
def test_vllm_serves_the_bf16_export_of_a_bf16_target(tmp_path):
    target = _bf16_target(tmp_path / "target")
    cfg = config_from_dict(
        {
            "data": {"train_path": str(SHAKESPEARE / "data" / "train_text.jsonl")},
            "model": {"target_path": str(target), "draft_vocab_size": 1024},
            "training": {
                "device": "cpu",
                "max_seq_length": 64,
                "batch_size": 8,
                "micro_batch_size": 8,
                "num_steps": 3,  # bf16 on CPU is slow; what is checked is the dtype vLLM loads
                "lr": 5e-3,
                "warmup_steps": 1,
                "min_lr": 5e-4,
                "eval_every": 1000,
            },
            "eval": {"enabled": False},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        }
    )
    run_training(cfg)
    final = tmp_path / "run" / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "bfloat16"
    weights = load_file(str(final / "model.safetensors"))
    assert {t.dtype for name, t in weights.items() if name not in ("d2t", "t2d")} == {torch.bfloat16}

    served = serve_with_vllm(
        target, final, SHAKESPEARE / "data" / "heldout_text.jsonl", num_prompts=4, max_new_tokens=24, dtype="auto"
    )
    assert served["verify_steps"] > 0 and served["new_tokens"] > 0, served
