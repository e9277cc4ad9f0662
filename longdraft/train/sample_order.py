"""Deterministic, resumable sample order: one seeded permutation per epoch.

The position in the stream (samples consumed) is all a checkpoint needs to continue exactly.
"""

from __future__ import annotations

import torch


class SampleOrder:
    def __init__(self, num_samples: int, seed: int, position: int = 0):
        if num_samples < 1:
            raise ValueError("no training samples left after loading and filtering")
        self.num_samples = num_samples
        self.seed = seed
        self.position = position
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_samples, generator=gen).tolist()
        return self._perm

    def take(self, count: int) -> list[int]:
        out = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.num_samples)
            out.append(self._permutation(epoch)[offset])
            self.position += 1
        return out

    @property
    def epoch(self) -> int:
        return self.position // self.num_samples
