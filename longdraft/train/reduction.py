"""Sums across ranks: one process group (all DP and SP ranks) or none on a single device.

Exactness rule (ARCHITECTURE.md, "Rank grid and reductions"): per TTT step the loss is normalised by the valid count summed over
every rank and micro-batch of the optimizer step, and gradients are then summed over all ranks.
That equals the single-device mean over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from longdraft.train.grad_buckets import BucketedGradientSum


class SumReducer:
    """Sums tensors over ``group``; a ``None`` group is the single-device no-op."""

    def __init__(self, group=None):
        self.group = group
        self._bucketed: dict[tuple[int, ...], BucketedGradientSum] = {}

    def bucketed(self, params: list[torch.Tensor], bucket_mb: float) -> BucketedGradientSum | None:
        """The overlapped gradient sum of ``params`` (made once, its hooks stay registered); ``None``
        on one device or with ``bucket_mb`` 0 (then ``sum_gradients_`` after the backward)."""
        if self.group is None or bucket_mb <= 0:
            return None
        key = tuple(id(p) for p in params)
        if key not in self._bucketed:
            self._bucketed[key] = BucketedGradientSum(params, self.group, int(bucket_mb * 2**20))
        return self._bucketed[key]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.group is not None:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.group is not None:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return tensor

    def sum_gradients_(self, params) -> None:
        if self.group is None:
            return
        # A rank whose micro-batches were all skipped has no gradients yet; it must still send
        # zeros of the same size, or the all-reduce would not match across ranks.
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n
