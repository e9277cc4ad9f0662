"""A user's mistake prints one line and exits non-zero; --debug shows the traceback."""

import pytest

from longdraft.cli import main
from longdraft.config import ConfigError


def test_missing_config_is_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read config file" in err and "missing.yaml" in err
    assert "Traceback" not in err


def test_bad_value_names_file_line_key_and_expectation(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train_path: t.jsonl\nmodel:\n  target_path: t\ntraining:\n  lr: -1\noutput:\n  dir: o\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"longdraft: error: {path}:6: training.lr = -1.0 is invalid; expected a number >= 0 (0 measures a frozen draft)"
    )


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        main(["train", "--debug", str(tmp_path / "missing.yaml")])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("longdraft: error: "), err
    assert "Error:" not in lines[0] and "Traceback" not in err, err  # no Python type names
    return lines[0].removeprefix("longdraft: error: ")


def test_export_arguments_are_checked_before_reading(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    checkpoint = tmp_path / "step_1"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text("{}")
    (checkpoint / "tensors.safetensors").write_text("")
    cases = [
        ([str(tmp_path / "nowhere"), "out"], f"checkpoint directory {tmp_path / 'nowhere'} does not exist"),
        ([str(a_file), "out"], f"checkpoint directory {a_file} is a file; expected a directory"),
        ([str(tmp_path), "out"], f"{tmp_path}: not a checkpoint (expected state.json and tensors.safetensors"),
        ([str(checkpoint), str(a_file)], f"output directory {a_file} is a file; expected a directory"),
        ([str(checkpoint), str(a_file / "sub")], f"output directory {a_file / 'sub'}: {a_file} is a file"),
    ]
    for args, expected in cases:
        assert main(["export", *args]) == 2
        assert _one_line_error(capsys).startswith(expected)


def test_eval_arguments_are_checked_before_loading(tmp_path, capsys, tiny_target):
    target = tiny_target()
    capsys.readouterr()  # building the target prints progress
    draft = tmp_path / "draft"
    draft.mkdir()
    for name in ("config.json", "model.safetensors"):
        (draft / name).write_text("{}")
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "hello"}\n')
    base = ["eval", "--target", str(target), "--draft", str(draft), "--data", str(data)]
    cases = [
        (["--target", str(tmp_path / "no")], f"--target {tmp_path / 'no'} does not exist; expected a directory"),
        (["--draft", str(data)], f"--draft {data} is a file; expected a directory"),
        (["--draft", str(tmp_path)], f"--draft {tmp_path} has no config.json, model.safetensors"),
        (["--data", str(tmp_path)], f"--data {tmp_path} is a folder with no *.parquet file and no state.json"),
        (["--num-prompts", "0"], "argument --num-prompts: 0: expected an integer >= 1"),
        (["--num-steps", "x"], "argument --num-steps: 'x' is not a whole number; expected an integer >= 1"),
        (["--device", "cudx"], "--device='cudx': expected auto, cpu, cuda or cuda:N"),
        (["--out", str(data / "x.json")], f"--out {data / 'x.json'}: {data} is a file"),
        (["--aux-layers", "1,2"], "argument --aux-layers: '1,2': expected 3 distinct comma-separated layer ids"),
        (["--aux-layers", "1,2,99"], "--aux-layers: aux_layers=[1, 2, 99]: ids [99] are outside [0, 8)"),
    ]
    for extra, expected in cases:
        assert main([*base, *extra]) == 2
        assert _one_line_error(capsys).startswith(expected), expected


def test_regenerate_arguments_are_checked_before_loading(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train_path: t.jsonl\nmodel:\n  target_path: t\noutput:\n  dir: o\n")
    (tmp_path / "o").mkdir()
    cases = [
        (["--batch-size", "0"], "argument --batch-size: 0: expected an integer >= 1"),
        (["--temperature", "-1"], "argument --temperature: -1: expected a number >= 0 (0: greedy)"),
        (["--max-new-tokens", "x"], "argument --max-new-tokens: 'x' is not a whole number"),
        (["--out", str(tmp_path / "o")], f"--out {tmp_path / 'o'} is a directory; expected a file name"),
        ([], f"data.train_path {tmp_path / 't.jsonl'} does not exist; expected a file"),
    ]
    for extra, expected in cases:
        assert main(["regenerate", str(path), *extra]) == 2
        assert _one_line_error(capsys).startswith(expected), expected
