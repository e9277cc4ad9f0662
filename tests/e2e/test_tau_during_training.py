"""Real τ by context length during training on one device (``eval.every``): measured between steps
with the draft of that step, and at the last step equal to `longdraft eval`'s context evaluation of
the export (same prompts, the same emitted tokens and verification steps)."""

import sys
from pathlib import Path

import pytest
import torch

from longdraft.config import config_from_dict
from longdraft.config.schema import ConfigError
from longdraft.engines import hf
from longdraft.eval.context import run_context_eval
from longdraft.run import run_training
from longdraft.train.metrics_log import read_metrics
from longdraft.train.plot import plot_metrics

# The shipped Shakespeare target: a draft accepts tokens after a few steps, so the counts mean something.
SHAKESPEARE = Path(__file__).resolve().parents[2] / "examples" / "shakespeare"
LENGTHS, PROMPTS, NEW, K = [64, 256], 3, 16, 3


def tau_config(out, **overrides) -> dict:
    cfg = {
        "data": {
            "train_path": str(SHAKESPEARE / "data" / "train_text.jsonl"),
            "eval_path": str(SHAKESPEARE / "data" / "heldout_text.jsonl"),
        },
        "model": {"target_path": str(SHAKESPEARE / "target"), "draft_vocab_size": 1024},
        "training": {
            "device": "cpu",
            "max_seq_length": 128,
            "ttt_length": K,
            "batch_size": 8,
            "micro_batch_size": 8,
            "num_steps": 20,
            "lr": 5e-3,
            "warmup_steps": 2,
            "min_lr": 5e-4,
        },
        "eval": {"every": 10, "context_lengths": LENGTHS, "num_prompts": PROMPTS, "max_new_tokens": NEW},
        "output": {"dir": str(out), "plot": True},
    }
    for section, values in overrides.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def assert_last_tau_equals_the_export(cfg, out) -> list[dict]:
    """The last step's τ (and its counts) equal `run_context_eval` of ``out/final``; returns the records."""
    records = read_metrics(out)
    last = records[-1]
    assert last["tau_step"] == last["step"] == cfg.training.num_steps
    report = run_context_eval(
        cfg.model.target_path,
        out / "final",
        cfg.data.eval_path,
        LENGTHS,
        num_prompts=PROMPTS,
        max_new_tokens=NEW,
        num_draft_tokens=K,
        device="cpu",
    )
    for row in report["by_length"]:
        n = row["context_length"]
        assert row["num_prompts"] == PROMPTS
        assert (last[f"tau_tokens@{n}"], last[f"tau_steps@{n}"]) == (row["new_tokens"], row["verify_steps"])
        assert last[f"tau@{n}"] == row["acceptance_length"]
    assert max(last[f"tau@{n}"] for n in LENGTHS) > 1.05  # drafts accepted: the counts compared mean something
    return records


@pytest.mark.timeout(300)
def test_tau_during_training_on_one_device_equals_the_exports_evaluation(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cfg = config_from_dict(tau_config(tmp_path / "run"))
    loaders, load = [], hf.load_causal_lm  # the modules that load a target

    def counted_load(*args, **kwargs):
        loaders.append(sys._getframe(1).f_globals["__name__"])
        return load(*args, **kwargs)

    monkeypatch.setattr(hf, "load_causal_lm", counted_load)
    run_training(cfg)
    # the τ meter decodes with the HF engine's target instead of loading a second copy
    assert "longdraft.eval.context_tau" not in loaders and "longdraft.engines.hf" in loaders, loaders
    records = assert_last_tau_equals_the_export(cfg, tmp_path / "run")
    measured = [r for r in records if "tau_step" in r]
    assert [r["step"] for r in measured] == [r["tau_step"] for r in measured] == [10, 20]  # between steps, in place
    assert all(r["eval_tau_s"] > 0 for r in measured)
    # each step's own draft: the two measurements differ
    assert any(measured[0][f"tau_steps@{n}"] != measured[1][f"tau_steps@{n}"] for n in LENGTHS)
    print({r["tau_step"]: {n: round(r[f"tau@{n}"], 3) for n in LENGTHS} | {"s": r["eval_tau_s"]} for r in measured})
    assert (tmp_path / "run" / "metrics.png").is_file() and plot_metrics(tmp_path / "run").is_file()


def test_eval_every_needs_context_lengths(tmp_path):
    cfg = tau_config(tmp_path / "run", eval={"every": 2, "context_lengths": None})
    with pytest.raises(ConfigError, match="eval.every"):
        config_from_dict(cfg)
