"""``<output_dir>/metrics.jsonl`` (one JSON object per optimizer step) and optional TensorBoard."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA ``max_memory_allocated`` since the last reset, else the process peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss"


class MetricsLog:
    def __init__(self, output_dir: str | Path, resume_after_step: int | None = None, tensorboard: bool = False):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_after_step is None:
            self.path.write_text("")
        elif self.path.exists():  # drop records of steps the resumed run will redo
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_after_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError(
                    "training.tensorboard=true needs the 'tensorboard' package: pip install tensorboard"
                ) from exc
            self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, record["step"])
                elif isinstance(value, list):
                    for k, v in enumerate(value):
                        if isinstance(v, (int, float)):
                            self._tb.add_scalar(f"{key}/{k}", v, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]
