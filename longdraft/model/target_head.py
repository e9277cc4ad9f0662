"""The frozen target ``lm_head`` a run learns from, with its draft-vocab rows cut once per run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longdraft.target.logits import LogitTransform


@dataclass(frozen=True)
class TargetHead:
    """``full`` ``[Vt, Ht]`` decides which targets fall in the draft vocab; ``draft_rows`` ``[Vd, Ht]``
    (``full[draft_to_target]``) scores them. Cut once at setup: at 8B dimensions the rows are 512 MB
    in fp32, too much to rebuild every step. ``logits``: what the target does to its logits before
    its softmax (`TargetSpec.logits`: Gemma's soft-cap, Granite's scaling), applied by the loss."""

    full: torch.Tensor
    draft_rows: torch.Tensor
    logits: LogitTransform = LogitTransform()

    @classmethod
    def cut(cls, full: torch.Tensor, draft_to_target: torch.Tensor, logits: LogitTransform | None = None) -> TargetHead:
        return cls(full, full[draft_to_target.to(full.device)], logits or LogitTransform())

    @property
    def device(self) -> torch.device:
        return self.full.device
