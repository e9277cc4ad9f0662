"""The frozen target ``lm_head`` a run learns from, with its draft-vocab rows cut once per run."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TargetHead:
    """``full`` ``[Vt, Ht]`` decides which targets fall in the draft vocab; ``draft_rows`` ``[Vd, Ht]``
    (``full[draft_to_target]``) scores them. Cut once at setup: at 8B dimensions the rows are 512 MB
    in fp32, too much to rebuild every step."""

    full: torch.Tensor
    draft_rows: torch.Tensor

    @classmethod
    def cut(cls, full: torch.Tensor, draft_to_target: torch.Tensor) -> TargetHead:
        return cls(full, full[draft_to_target.to(full.device)])

    @property
    def device(self) -> torch.device:
        return self.full.device
