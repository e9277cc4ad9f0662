"""Attention backends the draft layer calls, selected by ``training.attention_backend``.

A backend turns one TTT step's local q/k/v into the step's attention output:
``prepare(q, k, v)`` moves local tensors into the layout ``attend`` needs (USP: the Ulysses
all-to-all), ``attend(q, keys, values)`` attends over the step-0 causal keys plus the diagonal keys
of later steps, ``finish(out)`` moves the result back. Single-device backends keep the layout.
"""

from __future__ import annotations

from typing import Protocol

import torch

from longdraft.model.attention_reference import ttt_attention_reference
from longdraft.model.attention_ttt import ttt_attention_fast


class AttentionBackend(Protocol):
    def prepare(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor): ...

    def attend(self, q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor: ...

    def finish(self, out: torch.Tensor) -> torch.Tensor: ...


class LocalAttention:
    """The whole sequence on one device: the reference (explicit mask) or the fast path."""

    def __init__(self, fast: bool = True):
        self._attend = ttt_attention_fast if fast else ttt_attention_reference

    def prepare(self, q, k, v):
        return q, k, v

    def attend(self, q, keys, values):
        return self._attend(q, keys, values)

    def finish(self, out):
        return out


def local_backend(name: str) -> LocalAttention:
    if name == "reference":
        return LocalAttention(fast=False)
    if name == "fast":
        return LocalAttention(fast=True)
    raise ValueError(f"training.attention_backend={name!r} is not a single-device backend; choose 'reference' or 'fast'")
