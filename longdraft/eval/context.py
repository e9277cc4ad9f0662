"""Acceptance by context length: speculative decoding after prompts of 256, 1024, ... tokens of
held-out text (``eval/context_prompts.py``), one report per length, a table and a chart.

A length whose prompts plus generated and drafted tokens would pass the target's
``max_position_embeddings`` is refused before anything runs, with the sizes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from longdraft.eval.context_prompts import context_prompts, document_ids
from longdraft.eval.errors import EvalInputError
from longdraft.eval.evaluate import load_for_eval, run_prompts
from longdraft.eval.report import summarize
from longdraft.target.spec import TargetSpec


def check_context_fits(
    context_lengths: Sequence[int], max_new_tokens: int, num_draft_tokens: int, max_positions: int | None
) -> None:
    if max_positions is None:
        return
    for n in context_lengths:
        need = n + max_new_tokens + num_draft_tokens
        if need > max_positions:
            raise EvalInputError(
                f"context length {n}: {n} prompt + {max_new_tokens} new + {num_draft_tokens} draft "
                f"tokens = {need} positions, more than the target's max_position_embeddings "
                f"= {max_positions}"
            )


def run_context_eval(
    target_dir: str | Path,
    draft_dir: str | Path,
    data_path: str | Path,
    context_lengths: Sequence[int],
    *,
    num_prompts: int = 8,
    max_new_tokens: int = 64,
    num_draft_tokens: int = 7,
    aux_layers: Sequence[int] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    check_greedy: bool = False,
    progress: bool = False,
) -> dict:
    started = time.perf_counter()
    lengths = sorted({int(n) for n in context_lengths})
    limit = TargetSpec.load(target_dir).max_position_embeddings
    check_context_fits(lengths, max_new_tokens, num_draft_tokens, limit)
    target, proposer, tokenizer, stop_ids = load_for_eval(target_dir, draft_dir, device, dtype, aux_layers)
    docs = document_ids(data_path, tokenizer)
    by_length = []
    try:
        for n in lengths:
            prompts = context_prompts(docs, n, num_prompts, max_new_tokens, tokenizer.bos_token_id)
            with torch.no_grad():
                outcomes = run_prompts(
                    target, proposer, prompts, max_new_tokens, num_draft_tokens, stop_ids, check_greedy, progress
                )
            report = summarize(outcomes, num_draft_tokens)
            by_length.append({"context_length": n, **{k: v for k, v in report.items() if k != "per_prompt"}})
    finally:
        target.close()
    return {
        "context_lengths": lengths,
        "by_length": by_length,
        "target": str(target_dir),
        "draft": str(draft_dir),
        "data": str(data_path),
        "max_new_tokens": max_new_tokens,
        "wall_s": time.perf_counter() - started,
    }


def format_context_table(report: dict) -> str:
    k = report["by_length"][0]["num_draft_tokens"] if report["by_length"] else 0
    lines = [
        f"acceptance by context length ({report['max_new_tokens']} new tokens, {k} draft tokens per step)",
        "context  prompts    tau   " + " ".join(f"pos{j + 1:<3d}" for j in range(k)),
    ]
    for r in report["by_length"]:
        rates = " ".join(f"{x:6.3f}" if x is not None else "     -" for x in r["accept_rate_per_position"])
        tau = "-" if r["acceptance_length"] is None else f"{r['acceptance_length']:.3f}"
        lines.append(f"{r['context_length']:>7d}  {r['num_prompts']:>7d}  {tau:>5s}   {rates}")
    return "\n".join(lines)


def plot_context(reports: dict[str, dict], path: str | Path) -> Path:
    """τ against context length, one line per report (label -> `run_context_eval` report)."""
    from longdraft.train.plot import PlotUnavailable

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'longdraft[plot]'") from exc
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    draw_context(fig.add_subplot(1, 1, 1), reports)
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    return out


def draw_context(ax, reports: dict[str, dict]) -> None:
    """τ against context length on ``ax``, one annotated line per report."""
    for label, report in reports.items():
        rows = [r for r in report["by_length"] if r["acceptance_length"] is not None]
        xs, ys = [r["context_length"] for r in rows], [r["acceptance_length"] for r in rows]
        ax.plot(xs, ys, marker="o", label=label)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens of context before the generated text")
    ax.set_ylabel("acceptance length τ (bonus token included)")
    ax.set_title("Acceptance by context length")
    ax.grid(True, alpha=0.3)
    ax.legend()
