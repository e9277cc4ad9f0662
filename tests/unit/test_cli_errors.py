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
