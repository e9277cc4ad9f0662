"""Sums and maxima across ranks: one process group (all DP and SP ranks) or none on a single device.

Every cross-rank reduction of the loop and the step goes through here (collectives live in
``parallel/``; ARCHITECTURE.md, "Rank grid and reductions"). A tensor is handed to the collective
on ``device``, the one the group's backend takes for this rank (NCCL refuses CPU tensors), and the
result is written back where the tensor lives, so callers may reduce CPU bookkeeping on any backend.

Exactness rule: per TTT step the loss is normalised by the valid count summed over every rank and
micro-batch of the optimizer step, and gradients are then summed over all ranks. That equals the
single-device mean over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from longdraft.parallel.grad_buckets import ONE_BUCKET, BucketedGradientSum


class SumReducer:
    """Reduces over ``group`` on ``device`` (the rank's training device; ``None``: wherever each
    tensor is); a ``None`` group is the single-device no-op."""

    def __init__(self, group=None, device: torch.device | None = None):
        self.group, self.device = group, device
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

    def _all_reduce_(self, tensor: torch.Tensor, op) -> torch.Tensor:
        if self.group is None:
            return tensor
        moved = self.device is not None and tensor.device != self.device
        on_device = tensor.to(self.device) if moved else tensor
        dist.all_reduce(on_device, op=op, group=self.group)
        if moved:
            tensor.copy_(on_device)
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place."""
        return self._all_reduce_(tensor, dist.ReduceOp.SUM)

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``'s elementwise maximum over the ranks, in place."""
        return self._all_reduce_(tensor, dist.ReduceOp.MAX)

    def sum_numbers(self, values: list[float]) -> list[float]:
        """Python numbers summed over the ranks (float64: exact for counts below 2**53)."""
        return self.sum_(torch.tensor(values, dtype=torch.float64)).tolist()

    def max_numbers(self, values: list[float]) -> list[float]:
        return self.max_(torch.tensor(values, dtype=torch.float64)).tolist()

    def gather_number(self, value: float) -> list[float]:
        """One number from every rank of the group, in rank order (a sum of one-hot vectors)."""
        if self.group is None:
            return [float(value)]
        slots = torch.zeros(dist.get_world_size(self.group), dtype=torch.float64)
        slots[dist.get_rank(self.group)] = value
        return self.sum_(slots).tolist()
