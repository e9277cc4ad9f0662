"""Training checkpoints under ``<output_dir>/checkpoints/step_<N>/`` and resume from the newest one.

A checkpoint holds everything a resumed run needs to continue bit-for-bit on CPU: model and
optimizer state, scheduler, every RNG state, the data position, and the vocab mapping.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, extra: dict) -> Path:
    path = Path(output_dir) / "checkpoints" / f"step_{step}"
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "extra": extra,
        },
        tmp / "state.pt",
    )
    if path.exists():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    tmp.rename(path)  # a crash mid-save never leaves a half-written step_<N>
    return path


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "state.pt").exists()]
    return max(steps)[1] if steps else None


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None, restore_rng: bool = True) -> dict:
    state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {"step": state["step"], **state["extra"]}
