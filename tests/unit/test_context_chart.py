"""Comparing drafts by context length: the table reads each draft's own report, the curve check
compares the last τ measured during training with the evaluation after training by its counts."""

import json

import matplotlib  # noqa: F401  (longdraft[plot]; installed by scripts/install.sh)

from longdraft.eval.context_chart import main


def _report(taus: dict[int, tuple[int, int]]) -> dict:
    """eval_context.json with ``{length: (new_tokens, verify_steps)}``."""
    return {
        "by_length": [
            {"context_length": n, "acceptance_length": t / s, "new_tokens": t, "verify_steps": s}
            for n, (t, s) in taus.items()
        ]
    }


def _write_run(runs, name, taus, curve=None):
    run = runs / name
    run.mkdir(parents=True)
    (run / "eval_context.json").write_text(json.dumps(_report(taus)))
    records = [{"step": 1, "loss": 3.0}]
    for step, counts in curve or []:
        record = {"step": step + 1, "tau_step": step}
        for n, (t, s) in counts.items():
            record.update({f"tau@{n}": t / s, f"tau_tokens@{n}": t, f"tau_steps@{n}": s})
        records.append(record)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_table_and_chart_with_a_curve_that_ends_at_the_final_evaluation(tmp_path, capsys):
    final = {256: (300, 100), 4096: (250, 125)}
    _write_run(tmp_path, "short", {256: (350, 100), 4096: (140, 100)})
    _write_run(tmp_path, "long", final, curve=[(2, {256: (200, 100), 4096: (210, 105)}), (4, final)])
    out = tmp_path / "chart.png"
    assert main([str(tmp_path), "short=at 256", "long=at 4096", "--curve", "long", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| τ, at 256 | 3.50 | 1.40 |" in text
    assert "| τ, at 4096 | 3.00 | 2.00 |" in text
    assert "| 2 | 2.00 | 2.00 |" in text and "| 4 | 3.00 | 2.00 |" in text
    assert "the last (step 4) equals the evaluation after training" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_curve_whose_last_point_measured_something_else_fails(tmp_path, capsys):
    # Same τ at 4096 (2.0), other counts: the check compares what was measured, not the rounded ratio.
    _write_run(tmp_path, "long", {4096: (250, 125)}, curve=[(4, {4096: (252, 126)})])
    assert main([str(tmp_path), "long=at 4096", "--curve", "long", "--out", str(tmp_path / "c.png")]) == 1
    assert "context 4096: during training 252 tokens / 126 steps, after 250 / 125" in capsys.readouterr().err


def test_a_missing_report_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path), "nothing=x", "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nothing/eval_context.json: not found" in err


def test_a_run_without_tau_during_training_is_one_line(tmp_path, capsys):
    _write_run(tmp_path, "short", {256: (300, 100)})
    assert main([str(tmp_path), "short=x", "--curve", "short", "--out", str(tmp_path / "c.png")]) == 2
    assert "no τ measured during training" in capsys.readouterr().err
