"""The estimate: the real step under ``FakeTensorMode`` (no allocation, no compute), as torchtitan's
memory estimation runs it, plus what the step needs to get through it.

The step takes decisions from small integer data (loss masks, chunk bounds: ``.tolist()``, boolean
indexing, ``torch.unique``). ``PlanFakeMode`` keeps integer and boolean tensors real and fakes only the
floating-point ones (weights, activations, hidden states), so every such decision is the real one.
Where a value computed from fake data reaches Python or a real mask, it is taken as the worst case
for memory: a scalar reads as 1 (a finite gradient norm: the optimizer steps), a boolean written
into a real mask as True (every position counts).
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils import _pytree as pytree

aten = torch.ops.aten
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _worst_case(dtype: torch.dtype):
    return True if dtype == torch.bool else 1


def _masks_to_indices(indices: list) -> list:
    """Real boolean masks in an index list become their (real) coordinates, so the result's shape is known."""
    out = []
    for index in indices:
        if isinstance(index, torch.Tensor) and not isinstance(index, FakeTensor) and index.dtype == torch.bool:
            out.extend(index.nonzero(as_tuple=True))
        else:
            out.append(index)
    return out


def _creates_floats(func, args, kwargs) -> bool:
    """A factory (no tensor input): does it make a floating-point tensor? (probed on ``meta``)."""
    dtype = kwargs.get("dtype")
    if dtype is None:
        try:
            dtype = func(*args, **{**kwargs, "device": torch.device("meta")}).dtype
        except (RuntimeError, TypeError):
            return True
    return dtype.is_floating_point


class PlanFakeMode(FakeTensorMode):
    def __init__(self) -> None:
        super().__init__(allow_non_fake_inputs=True)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        if not any(isinstance(t, FakeTensor) for t in tensors):
            if tensors or not _creates_floats(func, args, kwargs):
                return func(*args, **kwargs)  # integer data and factories stay real
            return super().__torch_dispatch__(func, types, args, kwargs)
        if func is aten._local_scalar_dense.default:
            value = _worst_case(args[0].dtype)
            return float(value) if args[0].dtype.is_floating_point else value
        if func in _INDEXING:
            args = (args[0], _masks_to_indices(args[1]), *args[2:])
        target = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if func._schema.is_mutable and target is not None and not isinstance(target, FakeTensor):
            return target.fill_(_worst_case(target.dtype))  # a real tensor written from fake values
        return super().__torch_dispatch__(func, types, args, kwargs)
