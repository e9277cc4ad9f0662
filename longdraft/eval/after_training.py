"""Final evaluation of a training run: real acceptance length next to the simulated one.

The simulated value is training's held-out ``sim_acc_len = Σ_k Π_{j≤k} acc_j``: teacher-forced, without
the bonus token, so ``1 + sim_acc_len`` is the number comparable with the real τ, and the cumulative
products ``Π_{j≤k} acc_j`` compare with the real per-position acceptance rates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from longdraft.config import Config
from longdraft.eval.evaluate import run_speculative_eval
from longdraft.eval.report import format_table


def _last_eval_metrics(output_dir: Path, last_eval: dict | None) -> dict | None:
    if last_eval and "sim_acc_len" in last_eval:
        return last_eval
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    from longdraft.train.metrics_log import read_metrics

    for record in reversed(read_metrics(output_dir)):
        if "eval_sim_acc_len" in record:
            return {
                "sim_acc_len": record["eval_sim_acc_len"],
                "acc_k": record.get("eval_acc_k"),
                "chain_acc_len": record.get("eval_chain_acc_len"),
                "step": record["step"],
            }
    return None


def simulated_summary(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None
    cumulative, running = [], 1.0
    for acc in metrics.get("acc_k") or []:
        running *= acc
        cumulative.append(running)
    chain = metrics.get("chain_acc_len")
    return {
        "sim_acc_len": metrics["sim_acc_len"],
        "acceptance_length": 1.0 + metrics["sim_acc_len"],  # + the bonus token, comparable with τ
        "chain_acc_len": chain,
        "chain_acceptance_length": None if chain is None else 1.0 + chain,
        "acc_k": metrics.get("acc_k"),
        "cumulative_acc": cumulative,
    }


def side_by_side_table(simulated: dict | None, real: dict) -> str:
    k = real["num_draft_tokens"]
    sim_len = "-" if simulated is None else f"{simulated['acceptance_length']:.3f}"
    real_len = "-" if real["acceptance_length"] is None else f"{real['acceptance_length']:.3f}"
    sim_pos = (simulated or {}).get("cumulative_acc") or []
    chain = (simulated or {}).get("chain_acceptance_length")
    chain_len = "-" if chain is None else f"{chain:.3f}"
    lines = [
        "                       simulated     real",
        f"acceptance length   {sim_len:>12s} {real_len:>8s}   (1 + sim_acc_len vs tau; bonus token included)",
        f"chain estimate      {chain_len:>12s} {real_len:>8s}   (1 + chain_acc_len: steps 0..k all right, per position)",
    ]
    for j in range(k):
        sim = f"{sim_pos[j]:.3f}" if j < len(sim_pos) else "-"
        rate = real["accept_rate_per_position"][j]
        lines.append(f"accepted at pos {j + 1:<3d} {sim:>12s} {'-' if rate is None else f'{rate:.3f}':>8s}")
    return "\n".join(lines)


def final_evaluation(cfg: Config, train_result) -> dict:
    """Run the speculative evaluator on held-out prompts; write and return ``<output_dir>/eval.json``."""
    output_dir = Path(train_result.output_dir)
    if not (Path(train_result.final_dir) / "config.json").is_file():  # written by trainer rank 0, maybe elsewhere
        from longdraft.errors import UserError

        key = "output.checkpoint_dir" if cfg.output.checkpoint_dir else "output.dir"
        raise UserError(
            f"the export {train_result.final_dir} that trainer rank 0 wrote is not visible where the final "
            f"evaluation runs: {key} must be storage that every node and the driver share"
        )
    held_out = cfg.data.eval_path is not None
    data_path = cfg.data.eval_path if held_out else cfg.data.train_path
    real = run_speculative_eval(
        cfg.model.target_path,
        train_result.final_dir,
        data_path,
        num_prompts=cfg.eval.num_prompts,
        max_new_tokens=cfg.eval.max_new_tokens,
        num_draft_tokens=cfg.training.ttt_length,
        aux_layers=cfg.model.aux_layers,
        device=cfg.training.device,
        dtype=cfg.model.target_dtype,
        check_greedy=True,
    )
    simulated = simulated_summary(_last_eval_metrics(output_dir, train_result.last_eval))
    result = {
        "prompts_held_out": held_out,
        "acceptance_length": {
            "real": real["acceptance_length"],
            "simulated": None if simulated is None else simulated["acceptance_length"],
            "simulated_chain": None if simulated is None else simulated["chain_acceptance_length"],
        },
        "real": real,
        "simulated": simulated,
    }
    (output_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(real, per_prompt=False))
    print(side_by_side_table(simulated, real))
    if cfg.eval.context_lengths:
        context_evaluation(cfg, output_dir, train_result.final_dir, cfg.eval.context_path or data_path)
    if not held_out:
        print("note: data.eval_path is not set; prompts were taken from the training data")
    return result


def check_context_eval(cfg: Config) -> None:
    """Refuse context lengths the target cannot take, before training."""
    from longdraft.errors import UserError
    from longdraft.eval.context import check_context_fits
    from longdraft.target.spec import TargetSpec

    limit = TargetSpec.load(cfg.model.target_path).max_position_embeddings
    try:
        check_context_fits(
            cfg.eval.context_lengths,
            cfg.eval.max_new_tokens,
            cfg.training.ttt_length,
            limit,
        )
    except ValueError as e:
        raise UserError(f"eval.context_lengths: {e}") from None


def context_evaluation(cfg: Config, output_dir: Path, final_dir: Path, data_path: str) -> dict:
    """Acceptance by context length: ``eval_context.json`` and, with ``output.plot``, ``eval_context.png``."""
    from longdraft.eval.context import format_context_table, plot_context, run_context_eval
    from longdraft.train.plot import PlotUnavailable

    report = run_context_eval(
        cfg.model.target_path,
        final_dir,
        data_path,
        cfg.eval.context_lengths,
        num_prompts=cfg.eval.num_prompts,
        max_new_tokens=cfg.eval.max_new_tokens,
        num_draft_tokens=cfg.training.ttt_length,
        aux_layers=cfg.model.aux_layers,
        device=cfg.training.device,
        dtype=cfg.model.target_dtype,
        check_greedy=True,
    )
    (output_dir / "eval_context.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_context_table(report))
    if cfg.output.plot:
        try:
            label = f"max_seq_length {cfg.training.max_seq_length}"
            print(f"plot: {plot_context({label: report}, output_dir / 'eval_context.png')}")
        except PlotUnavailable as exc:
            print(f"warning: no eval_context.png: {exc}", file=sys.stderr)
    return report
