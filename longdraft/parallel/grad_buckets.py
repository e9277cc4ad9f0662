"""Gradient sums overlapped with the backward: parameters in buckets, each bucket's all-reduce
started (async) as soon as the last backward of the step has finished all of its parameters.

The buckets follow the parameters in reverse registration order (the order a backward usually
finishes them: the loss's ``lm_head`` first) and are started strictly in that order, so every rank
issues the same collectives in the same sequence whatever its hooks' timing. A bucket whose
parameters got no gradient in that backward (a rank with no micro-batch, an unused parameter) is
started by ``finish`` with zeros, in the same order. The sum is elementwise in fp32, so the result
equals one flat all-reduce after the backward, up to summation order; ``ONE_BUCKET`` is that flat
all-reduce (``training.grad_bucket_mb = 0``), through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

ONE_BUCKET = 1 << 62  # bytes: every parameter in one bucket


@dataclass
class _Bucket:
    params: list[torch.Tensor]
    ready: set[int] = field(default_factory=set)  # ids of the parameters finished in the armed backward
    flat: torch.Tensor | None = None
    work: object | None = None


class BucketedGradientSum:
    """``arm()`` before the step's last backward, ``finish()`` after it: gradients then hold their sum
    over ``group``. ``started_in_backward`` counts the buckets the backward itself started (overlap)."""

    def __init__(self, params: list[torch.Tensor], group, bucket_bytes: int):
        self.group = group
        self.buckets: list[_Bucket] = []
        size = bucket_bytes + 1  # forces a new bucket for the first parameter
        for p in reversed(params):
            nbytes = p.numel() * 4  # summed in fp32
            if size + nbytes > bucket_bytes and (not self.buckets or self.buckets[-1].params):
                self.buckets.append(_Bucket([]))
                size = 0
            self.buckets[-1].params.append(p)
            size += nbytes
        self._bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b.params}
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]
        self._armed = False
        self._next = 0  # first bucket not yet started
        self.started_in_backward = 0

    def arm(self) -> None:
        self._armed = True

    def _on_grad(self, param: torch.Tensor) -> None:
        if not self._armed:
            return  # an earlier micro-batch: its gradient is still being accumulated
        bucket = self.buckets[self._bucket_of[id(param)]]
        bucket.ready.add(id(param))
        while self._next < len(self.buckets) and len(self.buckets[self._next].ready) == len(
            self.buckets[self._next].params
        ):
            self._start(self.buckets[self._next])
            self.started_in_backward += 1

    def _start(self, bucket: _Bucket) -> None:
        for p in bucket.params:
            if p.grad is None:  # no gradient on this rank: it still sends zeros of the same size
                p.grad = torch.zeros_like(p)
        bucket.flat = torch.cat([p.grad.reshape(-1).float() for p in bucket.params])
        bucket.work = dist.all_reduce(bucket.flat, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        self._next += 1

    def finish(self) -> None:
        """Start what the backward did not, wait for every bucket, write the sums back."""
        while self._next < len(self.buckets):
            self._start(self.buckets[self._next])
        for bucket in self.buckets:
            bucket.work.wait()
            offset = 0
            for p in bucket.params:
                n = p.numel()
                p.grad.copy_(bucket.flat[offset : offset + n].view_as(p.grad))
                offset += n
            bucket.ready.clear()
            bucket.flat = bucket.work = None
        self._armed, self._next = False, 0

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
