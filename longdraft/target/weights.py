"""Read only the target's input embedding, ``lm_head`` and final norm from its safetensors files.

Trainer ranks need these matrices (frozen) but not the rest of the target, so they read them
directly instead of instantiating the whole model. What the config says about them (tied
embeddings, the norm's eps and kind) comes from `TargetSpec`, which calls these readers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from longdraft.errors import UserError

EMBED_KEYS = ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight", "embed_tokens.weight")
HEAD_KEYS = ("lm_head.weight",)


def _weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index when the checkpoint is sharded."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return {name: path / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    single = path / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    with safe_open(str(single), "pt") as f:
        return {name: single for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


def _missing(path: Path, names: tuple[str, ...], expected: str) -> UserError:
    """One line: the checkpoint, the names looked for, what the tensor is for."""
    where = path / "model.safetensors.index.json"
    if not where.is_file():
        where = path / "model.safetensors"
    return UserError(f"{where}: no tensor named {' or '.join(names)}; expected the target's {expected}")


def _read(files: dict[str, Path], names: tuple[str, ...]) -> torch.Tensor | None:
    for name in names:
        if name in files:
            with safe_open(str(files[name]), "pt") as f:
                return f.get_tensor(name)
    return None


def head_rows(target_path: str | Path) -> int:
    """Rows of the target's ``lm_head`` (the id space of ``d2t``/``t2d``), read from the header only."""
    path = Path(target_path)
    files = _weight_files(path)
    for name in (*HEAD_KEYS, *EMBED_KEYS):  # a tied target has no lm_head: its embedding has the rows
        if name in files:
            with safe_open(str(files[name]), "pt") as f:
                return int(f.get_slice(name).get_shape()[0])
    raise _missing(path, HEAD_KEYS + EMBED_KEYS, "lm_head or (tied) input embedding, [vocab, hidden]")


def load_embedding_and_head(target_path: str | Path, tied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding ``[V, H]``, lm_head ``[V, H]``) in fp32; a tied target reuses the embedding."""
    path = Path(target_path)
    files = _weight_files(path)
    embed = _read(files, EMBED_KEYS)
    if embed is None:
        raise _missing(path, EMBED_KEYS, "input embedding, [vocab, hidden]")
    head = _read(files, HEAD_KEYS)
    if head is None:
        if not tied:
            raise _missing(path, HEAD_KEYS, "lm_head [vocab, hidden] (config.json: tie_word_embeddings is false)")
        head = embed
    return embed.float(), head.float()


NORM_KEYS = ("model.norm.weight", "model.language_model.norm.weight", "norm.weight")


def load_final_norm(target_path: str | Path) -> torch.Tensor:
    """The final norm's weight ``[H]``: engines that capture the residual stream before the final norm
    (vLLM) apply it themselves to get the ``lm_head`` input (``engines/final_norm.py``)."""
    path = Path(target_path)
    weight = _read(_weight_files(path), NORM_KEYS)
    if weight is None:
        raise _missing(path, NORM_KEYS, "final RMSNorm weight, [hidden]")
    return weight
