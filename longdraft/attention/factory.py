"""The attention backends the draft layer calls, built by one factory from their name.

A backend turns one TTT step's local q/k/v into the step's attention output:
``prepare(q, k, v)`` moves local tensors into the layout ``attend`` needs (USP: the Ulysses
all-to-all), ``attend(q, keys, values)`` attends over the step-0 causal keys plus the diagonal keys
of later steps, ``finish(out)`` moves the result back. Single-device backends keep the layout.
``with_documents(doc_lengths)`` is the backend for one micro-batch whose single row packs documents
of these lengths (None: one sequence); a ``window`` limits every query to the last ``window``
step-0 keys (``attention/visibility.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from longdraft.attention.choice import choose_attention_backend
from longdraft.attention.reference import ttt_attention_reference
from longdraft.attention.ttt_step import ttt_attention_fast
from longdraft.attention.visibility import KeyVisibility
from longdraft.choices import ShardOrder

if TYPE_CHECKING:
    from longdraft.parallel.mesh import USPMesh
    from longdraft.step_meter import StepMeter


class AttentionBackend(Protocol):
    def prepare(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor): ...

    def attend(self, q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor: ...

    def finish(self, out: torch.Tensor) -> torch.Tensor: ...

    def with_documents(self, doc_lengths: tuple[int, ...] | None) -> AttentionBackend: ...


class LocalAttention:
    """The whole sequence on one device: the reference (explicit mask) or the fast path."""

    def __init__(
        self,
        fast: bool = True,
        meter: StepMeter | None = None,
        window: int | None = None,
        doc_lengths: tuple[int, ...] | None = None,
    ):
        self.fast, self.meter, self.window, self.doc_lengths = fast, meter, window, doc_lengths
        KeyVisibility(doc_lengths, window)  # refuses bad lengths or windows here, not mid-step

    def with_documents(self, doc_lengths: tuple[int, ...] | None) -> LocalAttention:
        if doc_lengths == self.doc_lengths:
            return self
        return LocalAttention(self.fast, self.meter, self.window, doc_lengths)

    def prepare(self, q, k, v):
        return q, k, v

    def attend(self, q, keys, values):
        if self.doc_lengths is not None and q.shape[0] != 1:
            raise ValueError(f"a micro-batch with documents holds one packed row, got a batch of {q.shape[0]}")
        docs, window = self.doc_lengths, self.window
        if self.fast:
            return ttt_attention_fast(q, keys, values, meter=self.meter, doc_lengths=docs, window=window)
        # the oracle: plain autograd, not timed
        return ttt_attention_reference(q, keys, values, doc_lengths=docs, window=window)

    def finish(self, out):
        return out


def make_attention_backend(
    name: str = "auto",
    *,
    mesh: USPMesh | None = None,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    order: ShardOrder = "contiguous",
    ring_mode: str = "ring",
    meter: StepMeter | None = None,
    window: int | None = None,
) -> AttentionBackend:
    """``fast``/``reference`` hold the sequence on one device; ``usp`` splits it over ``mesh``'s SP
    group (``ring_mode``: ``ring`` or ``gather``, see ``usp.py``); ``auto`` picks from ``mesh`` (no
    mesh or SP size 1: ``fast``). ``meter`` (optional) receives the attention time and communication.
    ``window`` (optional): each query sees at most the last ``window`` step-0 keys (a sliding-window draft)."""
    chosen = choose_attention_backend(name, mesh.sp_size if mesh is not None else 1)
    if chosen != "usp":
        return LocalAttention(fast=chosen == "fast", meter=meter, window=window)
    if num_heads is None or num_kv_heads is None:
        raise ValueError("the 'usp' attention backend needs num_heads and num_kv_heads")
    from longdraft.attention.usp import USPAttentionBackend

    return USPAttentionBackend(
        mesh, num_heads, num_kv_heads, order=order, ring_mode=ring_mode, meter=meter, window=window
    )
