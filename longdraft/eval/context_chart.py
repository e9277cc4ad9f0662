"""Compare trained drafts by context length, and check a run's τ curve recorded during training:

    python -m longdraft.eval.context_chart RUNS NAME=LABEL [NAME=LABEL ...] [--curve NAME] --out PNG

Reads ``RUNS/NAME/eval_context.json`` (each draft's evaluation after training) and prints a Markdown
table, τ per draft and context length. With ``--curve NAME`` it also reads that run's
``metrics.jsonl``, prints the τ it measured at every length every ``eval.every`` steps, and checks
that the last of them measured the same thing as the evaluation after training (equal emitted
tokens and verification steps at every length); it exits 1 when they differ. The chart: τ against
context length, one line per draft, and beside it the curve against step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longdraft.errors import UserError


def load_reports(runs: Path, drafts: list[tuple[str, str]]) -> dict[str, dict]:
    """label -> the ``eval_context.json`` report of ``runs/name``."""
    reports = {}
    for name, label in drafts:
        path = runs / name / "eval_context.json"
        if not path.is_file():
            raise UserError(f"{path}: not found (train {name} with eval.context_lengths first)")
        reports[label] = json.loads(path.read_text())
    return reports


def markdown_table(reports: dict[str, dict]) -> str:
    lengths = sorted({r["context_length"] for report in reports.values() for r in report["by_length"]})
    lines = [
        "| context (tokens) | " + " | ".join(str(n) for n in lengths) + " |",
        "| --- |" + " --- |" * len(lengths),
    ]
    for label, report in reports.items():
        tau = {r["context_length"]: r["acceptance_length"] for r in report["by_length"]}
        cells = ["-" if tau.get(n) is None else f"{tau[n]:.2f}" for n in lengths]
        lines.append(f"| τ, {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tau_records(run: Path) -> list[dict]:
    """The ``metrics.jsonl`` records of ``run`` that carry a τ measured during training."""
    from longdraft.train.metrics_log import read_metrics

    records = [r for r in read_metrics(run) if "tau_step" in r]
    if not records:
        raise UserError(f"{run / 'metrics.jsonl'}: no τ measured during training (train it with eval.every > 0)")
    return records


def curve_differences(last: dict, report: dict) -> list[str]:
    """Where the last τ measured during training differs from the evaluation after training."""
    out = []
    for r in report["by_length"]:
        n = r["context_length"]
        during = (last.get(f"tau_tokens@{n}"), last.get(f"tau_steps@{n}"))
        after = (r["new_tokens"], r["verify_steps"])
        if during != after:
            out.append(
                f"context {n}: during training {during[0]} tokens / {during[1]} steps, after {after[0]} / {after[1]}"
            )
    return out


def curve_table(records: list[dict]) -> str:
    from longdraft.train.plot import tau_lengths

    lengths = tau_lengths(records)
    lines = ["| step | " + " | ".join(f"τ@{n}" for n in lengths) + " |", "| --- |" + " --- |" * len(lengths)]
    for r in records:
        cells = ["-" if r.get(f"tau@{n}") is None else f"{r[f'tau@{n}']:.2f}" for n in lengths]
        lines.append(f"| {r['tau_step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(reports: dict[str, dict], curve: tuple[str, list[dict]] | None, path: Path) -> Path:
    from longdraft.eval.context import draw_context
    from longdraft.train.plot import PlotUnavailable, draw_tau_by_step, tau_lengths

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'longdraft[plot]'") from exc
    fig = Figure(figsize=(12 if curve else 6, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if curve else 1, squeeze=False)[0]
    draw_context(axes[0], reports)
    axes[0].legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: lines cross
    if curve:
        label, records = curve
        draw_tau_by_step(axes[1], records, tau_lengths(records))
        axes[1].set_title(f"τ while training: {label}")
        axes[1].grid(True, alpha=0.3)
    fig.savefig(path, bbox_inches="tight")
    return path


def _draft(text: str) -> tuple[str, str]:
    name, sep, label = text.partition("=")
    if not sep or not name or not label:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=LABEL (NAME a folder under RUNS)")
    return name, label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longdraft.eval.context_chart", description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, help="the folder that holds one folder per draft")
    parser.add_argument("drafts", nargs="+", type=_draft, help="NAME=LABEL: a draft's folder and its label")
    parser.add_argument("--curve", help="NAME of the draft whose τ during training to show and check")
    parser.add_argument("--out", type=Path, required=True, help="the chart to write (PNG)")
    args = parser.parse_args(argv)
    try:
        reports = load_reports(args.runs, args.drafts)
        print(markdown_table(reports))
        curve, differences = None, []
        if args.curve:
            labels = dict(args.drafts)
            if args.curve not in labels:
                raise UserError(f"--curve {args.curve}: not one of the drafts ({', '.join(labels)})")
            records = tau_records(args.runs / args.curve)
            curve = (labels[args.curve], records)
            print(f"\nτ during training ({args.curve}, metrics.jsonl):\n{curve_table(records)}")
            differences = curve_differences(records[-1], reports[labels[args.curve]])
            for line in differences:
                print(f"differs from the evaluation after training: {line}", file=sys.stderr)
            if not differences:
                print(f"the last (step {records[-1]['tau_step']}) equals the evaluation after training at every length")
        print(f"chart: {plot_comparison(reports, curve, args.out)}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
