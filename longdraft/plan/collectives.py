"""Bytes a collective would move, read from the op itself (``c10d.*``), so every collective of the step
counts: the attention's, the gradient buckets' and the metrics' sums.

Bytes are what this rank sends: all-to-all ``(n-1)/n`` of its input (its own slice stays), all-gather
its input to each of the ``n-1`` others, all-reduce ``2(n-1)/n`` of the tensor (ring algorithm),
a send its tensor. Kinds are named ``<collective>/<group>``, the group as the mesh names it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils import _pytree as pytree

_KINDS = {
    "alltoall_base_": "all_to_all",
    "alltoall_": "all_to_all",
    "allgather_": "all_gather",
    "_allgather_base_": "all_gather",
    "allreduce_": "all_reduce",
    "allreduce_coalesced_": "all_reduce",
    "reduce_scatter_": "reduce_scatter",
    "_reduce_scatter_base_": "reduce_scatter",
    "send": "send",
    "recv_": "recv",
    "broadcast_": "broadcast",
}


def is_collective(func) -> bool:
    return func.namespace == "c10d" and func._opname in _KINDS


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _process_group(args):
    for x in pytree.tree_leaves(args):
        if isinstance(x, torch.ScriptObject):
            return dist.ProcessGroup.unbox(x)
    raise ValueError("a c10d op without its process group")


def collective_bytes(func, args, group_names: list[tuple[object, str]]) -> tuple[str, int]:
    """``(kind, bytes this rank sends)`` of one ``c10d`` op; ``group_names``: ``(group, name)`` pairs."""
    kind = _KINDS[func._opname]
    group = _process_group(args)
    n = group.size()
    name = next((label for g, label in group_names if g is group), "group")
    first = [t for t in pytree.tree_leaves(args[0]) if isinstance(t, torch.Tensor)]
    if kind == "all_to_all":
        sent = _nbytes([args[1]]) * (n - 1) // n  # alltoall_base_(output, input, ...)
    elif kind == "all_gather":
        inputs = [t for t in pytree.tree_leaves(args[1]) if isinstance(t, torch.Tensor)]
        sent = _nbytes(inputs) * (n - 1)
    elif kind in ("all_reduce", "reduce_scatter"):
        sent = _nbytes(first) * 2 * (n - 1) // n if kind == "all_reduce" else _nbytes(first) * (n - 1) // n
    elif kind in ("send", "broadcast"):
        sent = _nbytes(first)
    else:  # a receive sends nothing
        sent = 0
    return f"{kind}/{name}", sent
