"""Attention backends behind one interface, chosen by ``training.attention_backend``.

``prepare(q, k, v)`` -> the layout ``attend`` wants; ``attend(q, keys, values)`` -> one TTT step;
``finish(out)`` -> back to the local ``[B, Hq, T_local, D]``. The single-device backends are
identity for ``prepare``/``finish``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from longdraft.model.attention_reference import ttt_attention_reference
from longdraft.model.attention_ttt import ttt_attention_fast
from longdraft.parallel.mesh import USPMesh
from longdraft.parallel.stats import CommStats
from longdraft.parallel.usp_attention import USPAttentionBackend

BACKENDS = ("reference", "fast", "usp")


class AttentionBackend(Protocol):
    def prepare(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def attend(self, q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor: ...

    def finish(self, out: torch.Tensor) -> torch.Tensor: ...


class _SingleDevice:
    def __init__(self, scale: float | None = None):
        self.scale = scale

    def prepare(self, q, k, v):
        return q, k, v

    def finish(self, out):
        return out


class ReferenceAttentionBackend(_SingleDevice):
    def attend(self, q, keys, values):
        return ttt_attention_reference(q, keys, values, self.scale)


class FastAttentionBackend(_SingleDevice):
    def attend(self, q, keys, values):
        return ttt_attention_fast(q, keys, values, self.scale)


def make_attention_backend(
    name: str,
    *,
    num_heads: int,
    num_kv_heads: int,
    mesh: USPMesh | None = None,
    layout: str = "contiguous",
    scale: float | None = None,
    stats: CommStats | None = None,
) -> AttentionBackend:
    """Build the backend named by ``training.attention_backend``."""
    if name == "reference":
        return ReferenceAttentionBackend(scale)
    if name == "fast":
        return FastAttentionBackend(scale)
    if name == "usp":
        if mesh is None:
            raise ValueError("training.attention_backend='usp' needs a USPMesh (built after init_process_group)")
        return USPAttentionBackend(mesh, num_heads, num_kv_heads, layout=layout, scale=scale, stats=stats)
    raise ValueError(f"training.attention_backend={name!r} is not one of {BACKENDS}")
