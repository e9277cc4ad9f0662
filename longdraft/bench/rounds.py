"""What the layout benchmarks share: ``--layouts`` selection and interleaved best-of-N rounds."""

from __future__ import annotations

import sys
from collections.abc import Callable


def select_layouts(specs: list, wanted_arg: str) -> list:
    """``--layouts a,b``: those specs, plus ``dp`` (the baseline) always; empty: every spec."""
    if not wanted_arg:
        return specs
    wanted = {name.strip() for name in wanted_arg.split(",")}
    unknown = wanted - {s.name for s in specs}
    if unknown:
        raise SystemExit(f"--layouts: unknown {sorted(unknown)}; available {[s.name for s in specs]}")
    return [s for s in specs if s.name in wanted or s.name == "dp"]


def best_of_rounds(specs: list, rounds: int, run: Callable[[object], dict], quiet: bool) -> list[dict]:
    """Runs every spec ``rounds`` times, interleaved (other load on a shared machine only ever adds
    time), keeps each spec's fastest row with ``step_s_rounds``, and adds ``ratio_to_dp`` against
    the first spec (``dp``)."""
    runs: dict[str, list[dict]] = {spec.name: [] for spec in specs}
    for _ in range(rounds):
        for spec in specs:
            runs[spec.name].append(run(spec))
            if not quiet:
                print(f"  ran {spec.name}: {runs[spec.name][-1]['step_s']:.3f} s/step", file=sys.stderr)
    rows = []
    for spec in specs:
        best = dict(min(runs[spec.name], key=lambda r: r["step_s"]))
        best["step_s_rounds"] = [round(r["step_s"], 4) for r in runs[spec.name]]
        rows.append(best)
    for row in rows:
        row["ratio_to_dp"] = row["step_s"] / rows[0]["step_s"]
    return rows
