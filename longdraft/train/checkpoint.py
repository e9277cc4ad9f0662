"""Training checkpoints under ``<output_dir>/checkpoints/step_<N>/`` and resume from the newest one.

A checkpoint holds everything a resumed run needs to continue bit-for-bit on CPU: model and
optimizer state, scheduler, every RNG state, the data position, and the vocab mapping. Tensors go
to ``tensors.safetensors`` and everything else to ``state.json``: loading one never runs code, so
a checkpoint from elsewhere is safe to resume or export. Pickle files are refused.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from longdraft.errors import UserError

STEP_DIR = re.compile(r"^step_(\d+)$")
TENSORS, STATE = "tensors.safetensors", "state.json"
_TENSOR_REF = "__tensor__"  # a JSON leaf {"__tensor__": name} stands for tensors[name]


class CheckpointError(UserError):
    """A checkpoint directory that is missing, incomplete or not in longdraft's format."""


def _split(tree, prefix: str, tensors: dict[str, torch.Tensor]):
    """Replace every tensor in a nested dict/list by a reference into ``tensors``."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree.detach().cpu().contiguous()
        return {_TENSOR_REF: prefix}
    if isinstance(tree, dict):
        return {
            "__keys__": [_split(k, f"{prefix}.k{i}", tensors) for i, k in enumerate(tree)],
            "__values__": [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(tree.values())],
        }
    if isinstance(tree, (list, tuple)):
        kind = "__tuple__" if isinstance(tree, tuple) else "__list__"
        return {kind: [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(tree)]}
    if isinstance(tree, np.ndarray):
        return {"__ndarray__": tree.tolist(), "dtype": str(tree.dtype)}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"checkpoint value at {prefix} has type {type(tree).__name__}, which is not saved")


def _join(tree, tensors: dict[str, torch.Tensor]):
    if isinstance(tree, dict):
        if _TENSOR_REF in tree:
            return tensors[tree[_TENSOR_REF]]
        if "__list__" in tree:
            return [_join(v, tensors) for v in tree["__list__"]]
        if "__tuple__" in tree:
            return tuple(_join(v, tensors) for v in tree["__tuple__"])
        if "__ndarray__" in tree:
            return np.asarray(tree["__ndarray__"], dtype=tree["dtype"])
        return {_join(k, tensors): _join(v, tensors) for k, v in zip(tree["__keys__"], tree["__values__"])}
    return tree


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1], *[x.item() if hasattr(x, "item") else x for x in np_state[2:]]),
    }
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
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    state = {
        "step": step,
        "model": _split(model.state_dict(), "model", tensors),
        "optimizer": _split(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": _split(scheduler.state_dict(), "scheduler", tensors),
        "rng": _split(rng_state(), "rng", tensors),
        "extra": _split(extra, "extra", tensors),
    }
    save_file(tensors, str(tmp / TENSORS))
    (tmp / STATE).write_text(json.dumps(state) + "\n")
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)  # a crash mid-save never leaves a half-written step_<N>
    return path


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / STATE).exists()]
    return max(steps)[1] if steps else None


def checkpoint_extra(path: str | Path) -> dict:
    """The ``extra`` record of a checkpoint (stream position, ...) and its step, from its JSON alone."""
    state = json.loads((Path(path) / STATE).read_text())
    return {"step": state["step"], **_join(state["extra"], {})}


def read_checkpoint(path: str | Path) -> dict:
    """The whole checkpoint as nested dicts with tensors, without touching any model."""
    path = Path(path)
    if not (path / STATE).is_file() or not (path / TENSORS).is_file():
        pickled = sorted(p.name for p in path.glob("*.pt")) if path.is_dir() else []
        if pickled:
            raise CheckpointError(
                f"{path}: {', '.join(pickled)} is a pickle file, which longdraft never loads "
                f"(it could run code); expected {STATE} and {TENSORS}"
            )
        raise CheckpointError(
            f"{path}: not a checkpoint (expected {STATE} and {TENSORS}; pass a directory "
            "like <output_dir>/checkpoints/step_<N>)"
        )
    try:
        state = json.loads((path / STATE).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path / STATE}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    tensors = load_file(str(path / TENSORS))
    return {name: _join(value, tensors) for name, value in state.items()}


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None, restore_rng: bool = True) -> dict:
    state = read_checkpoint(path)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {"step": state["step"], **state["extra"]}
