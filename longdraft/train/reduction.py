"""Sums across ranks: one process group (all DP and SP ranks) or none on a single device.

Exactness rule (ARCHITECTURE.md, "Rank grid and reductions"): per TTT step the loss is normalised by the valid count summed over
every rank and micro-batch of the optimizer step, and gradients are then summed over all ranks.
That equals the single-device mean over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from longdraft.train.grad_buckets import ONE_BUCKET, BucketedGradientSum


class SumReducer:
    """Sums tensors over ``group``; a ``None`` group is the single-device no-op."""

    def __init__(self, group=None):
        self.group = group
        self._bucketed: dict[tuple, BucketedGradientSum] = {}

    def bucketed(self, params: list[torch.Tensor], bucket_mb: float) -> BucketedGradientSum | None:
        """The overlapped gradient sum of ``params`` (made once, its hooks stay registered); ``None``
        on one device. ``bucket_mb`` 0 is one bucket: one all-reduce, started once the backward has
        finished every gradient."""
        if self.group is None:
            return None
        key = (bucket_mb, *(id(p) for p in params))
        if key not in self._bucketed:
            bucket_bytes = int(bucket_mb * 2**20) if bucket_mb > 0 else ONE_BUCKET
            self._bucketed[key] = BucketedGradientSum(params, self.group, bucket_bytes)
        return self._bucketed[key]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.group is not None:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.group is not None:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return tensor
