"""Extend the quick-start target to long context, as LLMs are extended: a larger RoPE base, then
continued training on long windows.

    python examples/shakespeare/extend_target.py --out examples/shakespeare/target_long

Starts from `examples/shakespeare/target` (same tokenizer, same weights), sets `rope_theta` to
`--rope-theta` and `max_position_embeddings` to `--max-positions`, and trains on random `--seq-len`
windows of the same training stream as `make_target.py` (training plays and their dialogues).
The summary (`training_summary.json`) gives the held-out loss (mean token NLL over the held-out plays)
at both context lengths: over 256-token windows, over `--seq-len`-token windows, and per position
band inside the long windows (so a reader sees whether late positions are predicted as well as early
ones). Deterministic given `--seed`, `--steps` and `--threads`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import plays
import torch
from make_target import heldout_windows, mean_nll, train_on_windows, training_stream
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def nll_by_position(model: LlamaForCausalLM, windows: torch.Tensor, bands: list[int]) -> dict[str, float]:
    """Mean NLL of the targets in each band ``[bands[i], bands[i+1])`` of positions, over ``windows``."""
    model.eval()
    totals = torch.zeros(len(bands) - 1, dtype=torch.float64)
    for row in windows:
        logits = model(input_ids=row[None, :-1]).logits.float()[0]
        nll = torch.nn.functional.cross_entropy(logits, row[1:], reduction="none").double()
        totals += torch.stack([nll[a:b].mean() for a, b in zip(bands[:-1], bands[1:])])
    model.train()
    return {f"{a}-{b}": float(t / len(windows)) for a, b, t in zip(bands[:-1], bands[1:], totals)}


def _shown(path: Path) -> str:
    """The path relative to the repository when it lies inside it (the summary is shipped)."""
    try:
        return str(path.resolve().relative_to(HERE.parents[1]))
    except ValueError:
        return str(path)


def held_out_losses(model: LlamaForCausalLM, tokenizer, seq_len: int, max_windows: int) -> dict:
    short = heldout_windows(tokenizer, 256, max_windows * seq_len // 256)
    long = heldout_windows(tokenizer, seq_len, max_windows)
    bands = sorted({0, 256, 1024, 2048, seq_len - 256, seq_len} & set(range(seq_len + 1)))
    return {
        "nll_256_windows": mean_nll(model, short, 8),
        f"nll_{seq_len}_windows": mean_nll(model, long, 1),
        "nll_by_position": nll_by_position(model, long, bands),
        "windows_256": len(short),
        f"windows_{seq_len}": len(long),
    }


def extend(args: argparse.Namespace) -> None:
    start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.base)
    model = LlamaForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    before = held_out_losses(model, tokenizer, args.seq_len, args.eval_windows)
    print("before:", json.dumps(before))
    config = model.config
    config.rope_parameters = {"rope_type": "default", "rope_theta": float(args.rope_theta)}
    config.max_position_embeddings = args.max_positions
    extended = LlamaForCausalLM(config)  # rebuilt so the rotary embedding uses the new base
    extended.load_state_dict(model.state_dict())
    model = extended
    tokenizer.model_max_length = args.max_positions
    stream = training_stream(tokenizer)
    print(f"train stream {len(stream)} tokens; {args.steps} steps of {args.batch_size} x {args.seq_len} tokens")
    losses, _ = train_on_windows(
        model, stream, args.steps, args.batch_size, args.seq_len, args.lr, max(1, args.steps // 10), args.seed
    )
    after = held_out_losses(model, tokenizer, args.seq_len, args.eval_windows)
    summary = {
        "base": _shown(args.base),
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "rope_theta": args.rope_theta,
        "max_position_embeddings": args.max_positions,
        "peak_lr": args.lr,
        "threads": args.threads,
        "tokens_seen": args.steps * args.batch_size * args.seq_len,
        "train_loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "heldout_plays": list(plays.HELDOUT_PLAYS),
        "heldout_before": before,
        "heldout_after": after,
        "long_context_no_worse": after[f"nll_{args.seq_len}_windows"] <= after["nll_256_windows"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "wall_time_s": round(time.time() - start, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = LlamaForCausalLM.from_pretrained(args.base).generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    for key in ("is_local", "local_files_only"):  # how this run loaded the base, not part of the tokenizer
        tok_config.pop(key, None)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=HERE / "target")
    parser.add_argument("--out", type=Path, default=HERE / "target_long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--rope-theta", type=float, default=160_000.0)
    parser.add_argument("--max-positions", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-windows", type=int, default=24, help="held-out windows of seq-len tokens to score")
    extend(parser.parse_args())


if __name__ == "__main__":
    main()
