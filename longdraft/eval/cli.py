"""``longdraft eval``: acceptance length of an exported EAGLE-3 draft with its target, decoded by our
own HF evaluator or served by vLLM (``--engine vllm``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longdraft.cli_args import Parser, device_name, existing_dir, existing_file, int_at_least, output_file
from longdraft.errors import UserError
from longdraft.target.spec import TargetSpec


def _aux_layers(text: str) -> list[int]:
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        layers = []
    if len(layers) != 3 or len(set(layers)) != 3 or min(layers) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 3 distinct comma-separated layer ids >= 0, e.g. 1,3,4")
    return layers


def _lengths(text: str) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",")]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated token counts >= 2, e.g. 256,1024,2048")
    return lengths


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="longdraft eval",
        description="Greedy chain speculative decoding with an HF target and an exported EAGLE-3 draft; "
        "reports the acceptance length tau (tokens per target verification step, bonus included).",
    )
    p.add_argument("--target", required=True, help="local HF target model directory")
    p.add_argument(
        "--engine",
        default="hf",
        choices=["hf", "vllm"],
        help="hf: our evaluator (default); vllm: serve the draft with vLLM's EAGLE-3 speculative decoding "
        "and report vLLM's own counters (the export's layer ids are used; --aux-layers and --device are "
        "not)",
    )
    p.add_argument("--draft", required=True, help="exported draft directory (config.json + model.safetensors)")
    p.add_argument(
        "--data",
        required=True,
        help="JSONL file: conversations (prompt = turns before the first "
        "assistant turn) or text rows (prompt = first half of the tokens)",
    )
    p.add_argument("--num-prompts", type=int_at_least(1), default=16)
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=64)
    p.add_argument(
        "--num-steps", type=int_at_least(1), default=7, help="draft tokens per verification step K (default 7)"
    )
    p.add_argument("--max-text-prompt-tokens", type=int_at_least(1), default=128)
    p.add_argument(
        "--aux-layers",
        type=_aux_layers,
        default=None,
        help="target aux layers (default: those the export says it was trained on, else 1,N/2-1,N-4)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="target dtype")
    p.add_argument("--ignore-eos", action="store_true", help="always generate max-new-tokens tokens")
    p.add_argument(
        "--check-greedy",
        action="store_true",
        help="also run plain greedy decoding and report whether the outputs are equal",
    )
    p.add_argument(
        "--context-lengths",
        type=_lengths,
        default=None,
        help="acceptance by context length instead: prompts of exactly these many tokens cut from the "
        "documents of --data, e.g. 256,1024,2048,4096 (hf engine)",
    )
    p.add_argument("--plot", type=Path, default=None, help="with --context-lengths: also draw tau against context")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report to this file")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Every path and choice, before the target is loaded."""
    target = existing_dir(args.target, "--target", ["config.json"], "a local Hugging Face model directory")
    existing_dir(args.draft, "--draft", ["config.json", "model.safetensors"], "an export: <output.dir>/final")
    existing_file(args.data, "--data")
    for name in ("out", "plot"):
        if getattr(args, name) is not None:
            output_file(getattr(args, name), f"--{name}")
    if args.plot is not None and args.context_lengths is None:
        raise UserError("--plot draws tau against context length: it needs --context-lengths")
    if args.context_lengths is not None and args.engine != "hf":
        raise UserError("--context-lengths runs with --engine hf")
    device_name(args.device)
    spec = TargetSpec.load(target)  # an unknown family quirk is refused here, by name
    if args.aux_layers is not None:
        try:
            spec.aux_layers(args.aux_layers)
        except ValueError as e:
            raise UserError(f"--aux-layers: {e}") from None


def main(argv: list[str] | None = None) -> int:
    from longdraft.eval.evaluate import run_speculative_eval
    from longdraft.eval.report import format_table

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `longdraft eval -- --target ...`: the separator argparse REMAINDER may pass on
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    check_arguments(args)
    if args.context_lengths is not None:
        return _context(args)
    common = dict(
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens,
        num_draft_tokens=args.num_steps,
        dtype=args.dtype,
        check_greedy=args.check_greedy,
        ignore_eos=args.ignore_eos,
        max_text_prompt_tokens=args.max_text_prompt_tokens,
    )
    if args.engine == "vllm":
        from longdraft.eval.vllm_serve import serve_with_vllm

        report = serve_with_vllm(args.target, args.draft, args.data, **common)
    else:
        report = run_speculative_eval(
            args.target,
            args.draft,
            args.data,
            aux_layers=args.aux_layers,
            device=args.device,
            progress=not args.json,
            **common,
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else format_table(report, per_prompt=args.engine == "hf"))
    if report["matches_greedy"] is False:
        print("error: speculative output differs from plain greedy decoding", file=sys.stderr)
        return 1
    return 0


def _context(args) -> int:
    from longdraft.eval.context import format_context_table, plot_context, run_context_eval

    report = run_context_eval(
        args.target,
        args.draft,
        args.data,
        args.context_lengths,
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens,
        num_draft_tokens=args.num_steps,
        aux_layers=args.aux_layers,
        device=args.device,
        dtype=args.dtype,
        check_greedy=args.check_greedy,
        progress=not args.json,
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot is not None:
        print(f"plot: {plot_context({Path(args.draft).name: report}, args.plot)}", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else format_context_table(report))
    if any(r["matches_greedy"] is False for r in report["by_length"]):
        print("error: speculative output differs from plain greedy decoding", file=sys.stderr)
        return 1
    return 0
