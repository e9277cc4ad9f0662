"""``longdraft`` command line: train, export, eval, bench."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longdraft.cli_args import Parser, existing_dir, int_at_least, number_at_least, output_dir

USAGE_EXAMPLES = """examples:
  longdraft train examples/shakespeare/draft.yaml
  longdraft train my.yaml training.num_steps=200 training.lr=3e-4 output.dir=runs/try2
  longdraft regenerate my.yaml --out data/train_regenerated.jsonl
  longdraft export runs/try2/checkpoints/step_200 runs/try2/exported
  longdraft eval --target examples/shakespeare/target --draft runs/try2/final --data heldout.jsonl --json
  longdraft bench attention --json
  longdraft plan examples/plan/llama31_8b/plan_128k.yaml --random-weights

Errors print one line; add --debug (anywhere) for the full traceback.
"""


def _train(args) -> int:
    from longdraft.config import load_config
    from longdraft.run import run_training

    cfg = load_config(args.config, args.overrides)
    result = run_training(cfg)
    print(f"trained {result.steps} steps; metrics: {result.output_dir / 'metrics.jsonl'}; export: {result.final_dir}")
    return 0


def _regenerate(args) -> int:
    import json

    from longdraft.config import load_config
    from longdraft.regenerate import RegenerateSettings, regenerate

    cfg = load_config(args.config, args.overrides)
    out = args.out or Path(cfg.output.dir) / "regenerated.jsonl"
    settings = RegenerateSettings(args.max_new_tokens, args.temperature, args.batch_size, args.seed)
    print(json.dumps(regenerate(cfg, out, settings)))
    return 0


def _export(args) -> int:
    from longdraft.train.export_checkpoint import export_checkpoint

    # what the directory holds is read_checkpoint's to check (it names a pickle, for one)
    existing_dir(args.checkpoint_dir, "checkpoint directory", hint="a checkpoint: <output.dir>/checkpoints/step_<N>")
    output_dir(args.out_dir, "output directory")
    out = export_checkpoint(args.checkpoint_dir, args.out_dir)
    print(f"exported {args.checkpoint_dir} to {out}")
    return 0


# Each benchmark is a module with ``main(argv) -> int | None``; the name is the subcommand.
BENCHES = {
    "attention": "longdraft.bench.attention",
    "step": "longdraft.bench.step",
    "memory": "longdraft.bench.memory",
    "stream": "longdraft.bench.stream",
    "producer": "longdraft.bench.producer",
    "datapath": "longdraft.bench.datapath",
    "loss": "longdraft.bench.loss",
    "packing": "longdraft.bench.packing",
}


def _bench(args) -> int:
    import importlib

    return importlib.import_module(BENCHES[args.what]).main(args.rest) or 0


def _plan(args) -> int:
    from longdraft.plan.cli import main as plan_main

    return plan_main(args.rest) or 0


def _eval(args) -> int:
    from longdraft.eval.cli import main as eval_main

    return eval_main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="longdraft",
        description="Train EAGLE-3 draft models for a target LLM, on one device or sequence-parallel over many.",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a draft from a YAML config (+ section.key=value overrides)")
    train.add_argument("config", help="YAML config file (see README: config reference)")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.lr=3e-4")
    train.set_defaults(func=_train)
    regen = sub.add_parser("regenerate", help="rewrite data.train_path with the target's own outputs (resumable)")
    regen.add_argument("config", help="YAML config: data.train_path, model.target_path, data.on_bad_row are used")
    regen.add_argument("overrides", nargs="*", help="section.key=value")
    regen.add_argument("--out", type=Path, default=None, help="output JSONL (default: <output.dir>/regenerated.jsonl)")
    regen.add_argument("--max-new-tokens", type=int_at_least(1), default=256, help="per assistant turn / text row")
    regen.add_argument(
        "--temperature", type=number_at_least(0, "0: greedy"), default=0.0, help="0: greedy (default); > 0: sampled"
    )
    regen.add_argument("--batch-size", type=int_at_least(1), default=8)
    regen.add_argument("--seed", type=int_at_least(0), default=0)
    regen.set_defaults(func=_regenerate)
    export = sub.add_parser("export", help="export a training checkpoint in the SGLang/vLLM EAGLE-3 layout")
    export.add_argument("checkpoint_dir", help="e.g. runs/x/checkpoints/step_100")
    export.add_argument("out_dir")
    export.set_defaults(func=_export)
    evaluate = sub.add_parser(
        "eval", help="speculative decoding with target + draft: acceptance length", add_help=False
    )
    evaluate.add_argument("rest", nargs=argparse.REMAINDER)
    evaluate.set_defaults(func=_eval)
    plan = sub.add_parser("plan", help="one rank's training step at any scale on this device: memory, time, bytes")
    plan.add_argument("rest", nargs=argparse.REMAINDER)
    plan.set_defaults(func=_plan)
    bench = sub.add_parser("bench", help=f"benchmarks that print JSON: {', '.join(BENCHES)}")
    bench.add_argument("what", choices=list(BENCHES))
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def _report(exc: BaseException) -> str:
    """One line for the user: their own mistakes as they are, anything else with its type."""
    from longdraft.errors import UserError

    if isinstance(exc, (UserError, FileNotFoundError)):
        return f"longdraft: error: {exc}"
    return f"longdraft: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv[:1] or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    # eval and bench parse their own options; argparse would refuse an option as the first
    # word of a REMAINDER argument (``longdraft eval --target ...``).
    try:
        if argv[:1] == ["eval"]:
            args = argparse.Namespace(func=_eval, rest=argv[1:])
        elif argv[:1] == ["plan"]:
            args = argparse.Namespace(func=_plan, rest=argv[1:])
        elif argv[:1] == ["bench"] and len(argv) > 1 and argv[1] in BENCHES:
            args = argparse.Namespace(func=_bench, what=argv[1], rest=argv[2:])
        else:
            args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(_report(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
