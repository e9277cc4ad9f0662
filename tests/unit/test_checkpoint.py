"""Checkpoints are safetensors + JSON: they round-trip exactly and a pickle is never loaded."""

import os
import pickle

import pytest
import torch

from longdraft.cli import main
from longdraft.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from longdraft.train.export_checkpoint import export_checkpoint


def _parts(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler


def test_round_trip_restores_model_optimizer_schedule_and_rng(tmp_path):
    model, optimizer, scheduler = _parts(0)
    for _ in range(2):
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        scheduler.step()
    extra = {"stream_position": 8, "skipped": {"too_few_loss_tokens": 1}, "draft_config": {"layers": [1, 2]}}
    path = save_checkpoint(tmp_path, 2, model, optimizer, scheduler, extra)
    assert sorted(p.name for p in path.iterdir()) == ["state.json", "tensors.safetensors"]
    assert latest_checkpoint(tmp_path) == path
    expected_draws = (torch.rand(3), __import__("random").random())

    model2, optimizer2, scheduler2 = _parts(1)
    state = load_checkpoint(path, model2, optimizer2, scheduler2)
    assert state == {"step": 2, **extra}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    a, b = optimizer.state_dict(), optimizer2.state_dict()
    assert a["param_groups"] == b["param_groups"]  # tuples (betas) stay tuples
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])
    assert scheduler.state_dict() == scheduler2.state_dict()
    assert torch.equal(torch.rand(3), expected_draws[0]) and __import__("random").random() == expected_draws[1]


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_crafted_pickle_is_refused_and_never_run(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoints" / "step_5"
    checkpoint.mkdir(parents=True)
    marker = tmp_path / "the_pickle_ran"
    payload = _RunsCode()
    payload.marker = str(marker)
    (checkpoint / "state.pt").write_bytes(pickle.dumps({"extra": payload}))
    with pytest.raises(CheckpointError, match="state.pt is a pickle file, which longdraft never loads"):
        export_checkpoint(checkpoint, tmp_path / "out")
    assert latest_checkpoint(tmp_path) is None  # resume does not pick it up either
    assert main(["export", str(checkpoint), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pickle file" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_checkpoint_killed_mid_write_is_never_the_newest(tmp_path):
    model, optimizer, scheduler = _parts(0)
    done = save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {"stream_position": 8})
    half = tmp_path / "checkpoints" / "step_4.tmp"  # what a kill during the write of step 4 leaves
    half.mkdir()
    (half / "tensors.safetensors").write_bytes(b"\0" * 10)
    (tmp_path / "checkpoints" / "step_6").mkdir()  # an empty directory (no state.json) is no checkpoint
    assert latest_checkpoint(tmp_path) == done
    again = save_checkpoint(tmp_path, 4, model, optimizer, scheduler, {"stream_position": 16})
    assert latest_checkpoint(tmp_path) == again and not half.exists()
