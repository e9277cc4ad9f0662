"""``<output_dir>/summary.json``: the run's totals, written here only, for one device and the pipeline alike."""

from __future__ import annotations

import json
from pathlib import Path

from longdraft.config import Config
from longdraft.train.loop import LoopResult


def write_summary(cfg: Config, loop: LoopResult, bad_rows: dict, data: list[str], extra: dict) -> dict:
    """The final loss and accuracy, last held-out evaluation, samples skipped by reason (bad rows of
    the data file and too few loss tokens), the data reports, and what the runner adds (``extra``:
    the pipeline's accounting, producers and ranks; one device's epochs)."""
    last = loop.history[-1] if loop.history else {}
    summary = {
        "steps": cfg.training.num_steps,
        "final_loss": last.get("loss"),
        "final_acc_k": last.get("acc_k"),
        "eval": loop.last_eval,
        **extra,
        "samples_skipped": {**{f"bad_row:{k}": v for k, v in bad_rows.items()}, **loop.skipped},
        "data": data,
    }
    path = Path(cfg.output.dir) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
