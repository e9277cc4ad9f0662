"""What a target does to ``lm_head(final_norm(h))`` before its softmax: Gemma-2/3's final soft-cap
``c·tanh(z/c)`` and Granite's ``z / logits_scaling``. The target distribution the draft learns is
the target's own softmax, so the loss applies the same transform (``model/loss.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogitTransform:
    """``softcap``: None or ``c`` (logits become ``c·tanh(z/c)``); ``scale``: logits are divided by it
    (HF Granite's order: scale first, then any soft-cap; no family sets both)."""

    softcap: float | None = None
    scale: float = 1.0

    @property
    def is_identity(self) -> bool:
        return self.softcap is None and self.scale == 1.0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits / self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
