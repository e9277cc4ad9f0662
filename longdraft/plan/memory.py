"""Peak memory of one step by kind, the same way in both methods: torch's ``MemTracker`` follows every
tensor's storage as ops create and free it, on real tensors (measure) or fake ones (estimate).

On CPU there is no allocator statistic like ``torch.cuda.max_memory_allocated`` (and the resident set
counts allocator caches and freed pages), so the measured peak is the tracker's count of live tensor
bytes over real tensors; on CUDA the allocator's peak is reported beside it. The tracker here keeps
only the global peak and its breakdown: its per-module statistics refuse a module called more than
once per step, and the TTT unroll calls the decoder layer K times.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType, _RefType

from longdraft.plan.collectives import collective_bytes, is_collective


class _CommRef(_RefType):
    COMM = "Communication"


# The kinds the plan reports, from the tracker's categories (``Other``: shards and the target head,
# registered with ``track_external``).
KINDS = {
    "weights": (_MemRefType.PARAM, _MemRefType.BUFFER),
    "gradients": (_MemRefType.GRAD,),
    "optimizer": (_MemRefType.OPT,),
    "activations": (_MemRefType.ACT, _MemRefType.TEMP),
    "communication": (_CommRef.COMM,),
    "inputs": (_MemRefType.OTH,),
}


class StepMemTracker(MemTracker):
    """``MemTracker`` that also names communication buffers (every tensor a collective reads or
    writes, while it lives) and counts each collective's bytes."""

    def __init__(self, group_names: list[tuple[object, str]]):
        super().__init__()
        self._ref_class = [*_MemRefType, _CommRef.COMM]  # the snapshot's keys
        self.group_names = group_names
        self.collective_bytes: dict[str, int] = defaultdict(int)

    # Per-module statistics off (see the module docstring); the global peak is kept by dispatch.
    def _pre_fw_hook(self, *args) -> None:
        pass

    def _post_fw_hook(self, *args) -> None:
        pass

    def _pre_bw_hook(self, *args) -> None:
        pass

    def _post_bw_hook(self, *args) -> None:
        pass

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not is_collective(func):
            return super().__torch_dispatch__(func, types, args, kwargs)
        kind, sent = collective_bytes(func, args, self.group_names)
        self.collective_bytes[kind] += sent
        buffers = [t for t in torch.utils._pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]
        for t in buffers:
            self._update_and_maybe_create_winfos(t, _CommRef.COMM)
        return super().__torch_dispatch__(func, types, args, kwargs)

    def peak_by_kind(self, device: torch.device) -> dict[str, int]:
        snap = self.get_tracker_snapshot("peak")
        dev = next((d for d in snap if torch.device(d).type == device.type), None)
        if dev is None:
            return dict.fromkeys([*KINDS, "total"], 0)
        by_kind = {kind: sum(snap[dev].get(ref, 0) for ref in refs) for kind, refs in KINDS.items()}
        by_kind["total"] = snap[dev]["Total"]
        return by_kind
