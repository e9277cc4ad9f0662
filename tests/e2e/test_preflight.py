"""Mistakes the pipeline would meet only after Ray, placement and the engines started are refused by
``longdraft train`` before anything starts: one line, exit status 2, Ray never imported.

Each case runs the real CLI in a fresh process, so "Ray never imported" is a fact about that process.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from longdraft.testing.tiny_target import tiny_rows

# Prints whether the process ever imported Ray: a run that started Ray cannot have avoided it.
DRIVER = (
    "import sys; from longdraft.cli import main; rc = main(sys.argv[1:]); "
    "print('ray imported' if 'ray' in sys.modules else 'ray not imported'); sys.exit(rc)"
)


def _pipeline_config(root, target, **training) -> str:
    config = {
        "data": {"train_path": "train.jsonl"},
        "model": {"target_path": str(target)},
        "training": {"max_seq_length": 48, "ttt_length": 2, "batch_size": 4, "num_steps": 2, "device": "cpu"}
        | {"num_trainers": 2, "sp_ulysses_size": 2}
        | training,
        "cluster": {"run_timeout_s": 120, "placement_timeout_s": 60},
        "output": {"dir": "out", "plot": False},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _write_rows(path, bad_line: int | None = None) -> None:
    lines = [json.dumps(r) for r in tiny_rows(num_conversations=3, num_texts=1)]
    if bad_line is not None:
        lines[bad_line - 1] = "{not json"
    path.write_text("\n".join(lines) + "\n")


def _train(config: str, *overrides: str) -> tuple[int, str, str, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, "train", config, *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(config).parent,  # relative overrides resolve against the working directory
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


def _assert_refused_before_start(result, expected: str) -> None:
    code, out, err, seconds = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-2000:])
    assert lines == [f"longdraft: error: {expected}"], err[-2000:]
    assert "ray not imported" in out, out
    assert seconds < 60, f"took {seconds:.0f} s: something started before the check"


@pytest.mark.timeout(320)
def test_a_bad_row_of_the_first_batch_is_refused_before_ray(tmp_path, tiny_target):
    _write_rows(tmp_path / "train.jsonl", bad_line=3)
    config = _pipeline_config(tmp_path, tiny_target())
    expected = (
        f"{tmp_path / 'train.jsonl'}:3: invalid JSON (Expecting property name enclosed in double quotes at column 2)"
    )
    _assert_refused_before_start(_train(config), expected)


@pytest.mark.timeout(320)
def test_heads_that_do_not_split_over_ulysses_are_refused_before_ray(tmp_path, tiny_target):
    _write_rows(tmp_path / "train.jsonl")
    target = tiny_target(hidden_size=48, num_heads=6, num_kv_heads=2)
    config = _pipeline_config(tmp_path, target, num_trainers=4, sp_ulysses_size=4)
    expected = (
        f"training.sp_ulysses_size = 4 does not fit the draft's heads (those of {target}/config.json): "
        "num_attention_heads=6 is not divisible by sp_ulysses_size=4; valid sp_ulysses_size values "
        "(divide both the heads and world size 4): [1, 2]"
    )
    _assert_refused_before_start(_train(config), expected)


@pytest.mark.timeout(320)
@pytest.mark.parametrize(
    "override,expected",
    [
        ("model.aux_layers=[1,2,99]", "model.aux_layers = [1, 2, 99]: aux_layers=[1, 2, 99]: ids [99] are outside"),
        ("model.draft_vocab_size=100000", "model.draft_vocab_size = 100000 is larger than the target's vocab of 384"),
        ("data.train_path=missing.jsonl", "data.train_path {root}/missing.jsonl does not exist; expected a file"),
    ],
)
def test_target_and_data_mistakes_are_refused_before_ray(tmp_path, tiny_target, override, expected):
    _write_rows(tmp_path / "train.jsonl")
    config = _pipeline_config(tmp_path, tiny_target())
    code, out, err, seconds = _train(config, override)
    assert code == 2 and "ray not imported" in out, (code, out, err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("longdraft: error: " + expected.format(root=tmp_path)), err[-2000:]
    assert seconds < 60
