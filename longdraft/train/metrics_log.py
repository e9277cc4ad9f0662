"""``<output_dir>/metrics.jsonl`` (one JSON object per optimizer step, and one for a τ result that
arrived with the last step besides its own), optional TensorBoard, and
the console: a progress bar in a terminal, or a line every ``training.log_every`` steps from a rank
actor (whose output reaches the driver as lines)."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch
from tqdm import tqdm


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA ``max_memory_allocated`` since the last reset, else the process peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss"


class MetricsLog:
    def __init__(
        self,
        output_dir: str | Path,
        resume_after_step: int | None = None,
        tensorboard: bool = False,
        console: Console | None = None,
    ):
        self.console = console
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

    def write(self, record: dict, show: bool = True) -> None:
        """Append ``record``; ``show``: a step's record, which the console shows (a τ result that
        joins no step's record is not)."""
        if show and self.console is not None:
            self.console.show(record)
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
        if self.console is not None:
            self.console.close()
        if self._tb is not None:
            self._tb.close()


class Console:
    """``bar``: a tqdm bar from ``first_step``; else a line every ``log_every`` steps and at the last."""

    def __init__(self, bar: bool, first_step: int, num_steps: int, log_every: int):
        self.num_steps, self.log_every = num_steps, log_every
        self.bar = tqdm(initial=first_step, total=num_steps, desc="train", unit="step") if bar else None

    def show(self, m: dict) -> None:
        step = m["step"]
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{m['loss']:.3f}", acc0=f"{m['acc_k'][0]:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
        elif step == self.num_steps or (self.log_every and step % self.log_every == 0):
            print(
                f"step {step}/{self.num_steps} loss {m['loss']:.3f} acc0 {m['acc_k'][0]:.3f} "
                f"{m['tokens_per_s']:.0f} tok/s",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]
