"""End to end through the CLI on a tiny random target: loss falls, resume is exact, export loads back."""

import json
import shutil

import pytest
import torch
import yaml

from longdraft.cli import main
from longdraft.target.spec import TargetSpec
from longdraft.testing.tiny_target import build_tiny_target, write_tiny_jsonl
from longdraft.train.export import load_exported_draft
from longdraft.train.metrics_log import read_metrics

REQUIRED_FIELDS = {
    "step",
    "loss",
    "loss_k",
    "acc_k",
    "sim_acc_len",
    "lr",
    "grad_norm",
    "loss_tokens",
    "samples",
    "elapsed_s",
    "peak_mem_bytes",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    # A target whose distribution is far from uniform, so a few steps of training visibly help.
    build_tiny_target(root / "target", initializer_range=0.3, seed=1)
    write_tiny_jsonl(root / "train.jsonl", num_conversations=24, num_texts=8)
    write_tiny_jsonl(root / "eval.jsonl", num_conversations=4, num_texts=2, seed=1)
    config = {
        "data": {"train_path": "train.jsonl", "eval_path": "eval.jsonl"},
        "model": {"target_path": "target", "draft_vocab_size": 200},
        "training": {
            "max_seq_length": 48,
            "ttt_length": 3,
            "batch_size": 4,
            "micro_batch_size": 2,
            "num_steps": 6,
            "lr": 3e-3,
            "save_every": 3,
            "eval_every": 3,
        },
        "output": {"dir": "out"},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    return root


def _train(workdir, *overrides):
    assert main(["train", str(workdir / "run.yaml"), *overrides]) == 0


@pytest.mark.timeout(240)
def test_train_resume_export(workdir):
    full = workdir / "out_full"
    _train(workdir, f"output.dir={full}")
    records = read_metrics(full)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(set(r) >= REQUIRED_FIELDS for r in records)
    for r in records:  # the step's time breakdown: attention and loss are parts of forward + backward
        t = r["time_s"]
        assert t["attention_s"] > 0 and t["loss_s"] > 0, t
        assert t["attention_s"] + t["loss_s"] <= t["forward_s"] + t["backward_s"], t
    assert records[-1]["loss"] < records[0]["loss"]
    assert "eval_acc_k" in records[2] and "eval_sim_acc_len" in records[-1]

    # Interrupt after step 3: keep only that checkpoint, then resume to the end.
    part = workdir / "out_resumed"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_6")
    shutil.rmtree(part / "final")
    _train(workdir, f"output.dir={part}", "training.resume=true")
    resumed = read_metrics(part)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(records[3:], resumed[3:]):
        assert abs(a["loss"] - b["loss"]) < 1e-6
        assert max(abs(x - y) for x, y in zip(a["acc_k"], b["acc_k"])) < 1e-6
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-6

    # The export loads back and the CLI export of the last checkpoint is identical to final/.
    embedding, _ = TargetSpec.load(workdir / "target").embedding_and_head()
    draft = load_exported_draft(full / "final", embedding)
    config = json.loads((full / "final" / "config.json").read_text())
    assert config["draft_vocab_size"] == 200 and config["vocab_size"] == embedding.shape[0]
    assert draft.t2d.sum() == 200
    assert main(["export", str(full / "checkpoints" / "step_6"), str(workdir / "exported")]) == 0
    from safetensors.torch import load_file

    a, b = (
        load_file(str(full / "final" / "model.safetensors")),
        load_file(str(workdir / "exported" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = yaml.safe_load((full / "config.yaml").read_text())
    assert saved["training"]["num_steps"] == 6 and saved["output"]["dir"] == str(full)


@pytest.mark.timeout(120)
def test_a_run_without_matplotlib_finishes_and_warns_once(workdir, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if not installed
    out = workdir / "out_noplot"
    _train(workdir, f"output.dir={out}", "training.num_steps=2", "training.save_every=0")
    err = capsys.readouterr().err
    assert err.count("warning: no metrics.png") == 1 and "longdraft[plot]" in err
    assert not (out / "metrics.png").exists()
    assert len(read_metrics(out)) == 2
    assert all(
        (out / name).exists()
        for name in ("config.yaml", "summary.json", "final/model.safetensors", "checkpoints/step_2/state.json")
    )
