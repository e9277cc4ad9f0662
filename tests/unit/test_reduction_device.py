"""Every reduction of the loop and the step hands its tensor to the collective on the device the
group's backend takes, without a GPU.

torch's fake process group, created for ``cuda`` alone, refuses a CPU tensor exactly as NCCL does
("No backend type associated with device type cpu"); fake tensors stand in for CUDA ones. The loop's
bookkeeping (samples, skipped, tokens as CPU float64; the peak memory) and the step's counts must
reach the collective as CUDA tensors and come back where they were. (The gradient buckets flatten the
gradients where the parameters live, the training device; a fake CUDA work cannot be waited on
without CUDA, so they are not run here.)
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from longdraft.parallel.reduction import SumReducer

pytestmark = pytest.mark.unit
CUDA = torch.device("cuda", 0)


class _CollectiveDevices(TorchDispatchMode):
    """Records the device of every tensor handed to a c10d collective."""

    def __init__(self):
        super().__init__()
        self.devices: list[torch.device] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d":
            self.devices += [t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        return func(*args, **(kwargs or {}))


@pytest.fixture
def cuda_only_group():
    dist.init_process_group("cuda:fake", store=FakeStore(), rank=0, world_size=2)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_the_fake_group_refuses_cpu_tensors_like_nccl(cuda_only_group):
    with pytest.raises(RuntimeError, match="device type cpu"):
        dist.all_reduce(torch.zeros(3), group=cuda_only_group)


def test_loop_and_step_reductions_reach_the_collective_on_the_device(cuda_only_group):
    reducer = SumReducer(cuda_only_group, CUDA)
    with FakeTensorMode(allow_non_fake_inputs=True), _CollectiveDevices() as seen:
        # The loop's bookkeeping, built on the CPU as the loop builds it.
        totals = reducer.sum_(torch.tensor([4, 1, 1234], dtype=torch.float64))
        peak = reducer.max_(torch.tensor([2.0**30], dtype=torch.float64))
        # The step's counts and sums, on the training device.
        counts = reducer.sum_(torch.zeros(3, dtype=torch.int64, device=CUDA))
    assert totals.device.type == "cpu" and peak.device.type == "cpu" and counts.device == CUDA
    assert len(seen.devices) == 3, seen.devices
    assert {d.type for d in seen.devices} == {"cuda"}, seen.devices
