"""``longdraft plan CONFIG [--world N] [--rank r] [--random-weights] [--json] [overrides...]``."""

from __future__ import annotations

import argparse

from longdraft.plan.run import METHODS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="longdraft plan",
        description="One real training step of one rank of the configured layout, on this device (torch's fake "
        "process group): peak memory by kind, step time, collective bytes, store bytes per sample, fit.",
    )
    p.add_argument("config", help="training YAML")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.max_seq_length=131072")
    p.add_argument("--world", type=int, help="number of trainer ranks (default: training.num_trainers)")
    p.add_argument("--rank", type=int, default=0, help="which rank to plan (default 0)")
    p.add_argument("--random-weights", action="store_true", help="target head/embedding random, from config.json")
    p.add_argument("--method", choices=METHODS, default="auto", help="auto: estimate, then measure if it fits here")
    p.add_argument("--device-memory-gib", type=float, help="memory of the planned device (default: its own)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def main(argv: list[str] | None = None) -> int:
    from longdraft.config import load_config
    from longdraft.plan.report import to_json, to_table
    from longdraft.plan.run import plan

    args = _parser().parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.world is not None:
        overrides.append(f"training.num_trainers={args.world}")
    cfg = load_config(args.config, overrides)
    result = plan(
        cfg,
        cfg.training.num_trainers,
        args.rank,
        random_weights=args.random_weights,
        method=args.method,
        device_memory_gib=args.device_memory_gib,
        config_path=args.config,
    )
    print(to_json(result) if args.json else to_table(result))
    return 0
