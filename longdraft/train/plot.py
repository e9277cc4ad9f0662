"""``<output_dir>/metrics.png``: loss and per-step acc_k over training steps, plus held-out curves
and, once ``eval.json`` exists, the real acceptance length of the final evaluation; with ``eval.every``
the real τ measured during training against the step it measured, one line per context length."""

from __future__ import annotations

import json
from pathlib import Path

from longdraft.train.metrics_log import read_metrics


def _real_acceptance_length(out: Path) -> float | None:
    """Real τ from ``eval.json`` of the final evaluation, when it already ran."""
    path = out / "eval.json"
    if not path.is_file():
        return None
    return (json.loads(path.read_text()).get("acceptance_length") or {}).get("real")


class PlotUnavailable(RuntimeError):
    """Plotting needs matplotlib (the ``plot`` extra), which is not installed."""


def plot_metrics(output_dir: str | Path, filename: str = "metrics.png") -> Path:
    # A bare Figure on an Agg canvas: no display needed, pyplot's global state is left alone.
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'longdraft[plot]'") from exc
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(output_dir)
    if not (out / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{out / 'metrics.jsonl'} not found: nothing to plot")
    records = [r for r in read_metrics(out) if "step" in r]
    if not records:
        raise ValueError(f"{out / 'metrics.jsonl'} has no records with a 'step'")
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r or "eval_acc_k" in r]
    real_tau = _real_acceptance_length(out)
    has_sim = any("eval_sim_acc_len" in r for r in evals) or real_tau is not None
    lengths = tau_lengths(records)
    panels = 2 + has_sim + bool(lengths)
    fig = Figure(figsize=(5 * panels, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)
    ax_loss, ax_acc = axes[0][0], axes[0][1]

    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if any("eval_loss" in r for r in evals):
        pts = [r for r in evals if "eval_loss" in r]
        ax_loss.plot([r["step"] for r in pts], [r["eval_loss"] for r in pts], "o--", label="held-out")
    ax_loss.set(xlabel="step", ylabel="loss (0.8^k weighted)", title="loss")
    ax_loss.legend()

    num_k = max((len(r.get("acc_k") or []) for r in records), default=0)
    colors = colormaps["viridis"]
    for k in range(num_k):
        color = colors(k / max(1, num_k - 1))
        pts = [r for r in train if len(r.get("acc_k") or []) > k]
        ax_acc.plot([r["step"] for r in pts], [r["acc_k"][k] for r in pts], color=color, label=f"acc_{k}")
        epts = [r for r in evals if len(r.get("eval_acc_k") or []) > k]
        if epts:
            ax_acc.plot([r["step"] for r in epts], [r["eval_acc_k"][k] for r in epts], "o--", color=color)
    ax_acc.set(xlabel="step", ylabel="top-1 agreement", title="acc_k (train solid, held-out dashed)", ylim=(0, 1))
    if num_k:
        ax_acc.legend(fontsize="small", ncol=2)

    if has_sim:
        pts = [r for r in evals if "eval_sim_acc_len" in r]
        ax_sim = axes[0][2]
        if pts:
            ax_sim.plot(
                [r["step"] for r in pts],
                [r["eval_sim_acc_len"] for r in pts],
                "o-",
                label="simulated (independent steps)",
            )
        chain = [r for r in evals if r.get("eval_chain_acc_len") is not None]
        if chain:
            ax_sim.plot(
                [r["step"] for r in chain],
                [r["eval_chain_acc_len"] for r in chain],
                "s-",
                label="chain estimate (steps in a row)",
            )
        if real_tau is not None:  # τ counts the bonus token, the simulated value does not
            ax_sim.axhline(real_tau - 1.0, color="tab:red", linestyle="--", label="real τ − 1 (final eval)")
        ax_sim.set(xlabel="step", ylabel="accepted drafts per verification", title="held-out acceptance length")
        ax_sim.legend()

    if lengths:
        draw_tau_by_step(axes[0][-1], records, lengths)

    fig.tight_layout()
    path = out / filename
    fig.savefig(path, dpi=100)
    return path


def tau_lengths(records: list[dict]) -> list[int]:
    """The context lengths whose τ the records carry (``tau@L`` keys), ascending."""
    return sorted({int(k.removeprefix("tau@")) for r in records for k in r if k.startswith("tau@")})


def draw_tau_by_step(ax, records: list[dict], lengths: list[int]) -> None:
    """Real τ during training (``eval.every``) against the step whose weights it measured."""
    for n in lengths:
        pts = [r for r in records if r.get(f"tau@{n}") is not None]
        ax.plot([r["tau_step"] for r in pts], [r[f"tau@{n}"] for r in pts], "o-", label=f"context {n}")
    ax.set(xlabel="step", ylabel="acceptance length τ (bonus included)", title="real τ by context length")
    ax.legend(fontsize="small")
