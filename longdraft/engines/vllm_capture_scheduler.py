"""The scheduler side of the capture connector: it records each request's `CapturePlan` when the
request is first scheduled, keeps a finished request's blocks, and tells the worker side, through
`CaptureMetadata`, which files to lock and which requests to save."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata

from longdraft.engines.vllm_capture_plan import CapturePlan


@dataclass
class PendingSave:
    req_id: str
    plan: CapturePlan
    token_ids: list[int]
    block_ids: list[int]


@dataclass
class CaptureMetadata(KVConnectorMetadata):
    saves: list[PendingSave] = field(default_factory=list)
    new_plans: dict[str, CapturePlan] = field(default_factory=dict)  # lock these before outputs return


class CaptureScheduler:
    def __init__(self, kv_cache_config: Any = None):
        self._group = hidden_state_group(kv_cache_config)
        self._plans: dict[str, CapturePlan] = {}
        self._saves: list[PendingSave] = []

    def build_connector_meta(self, scheduler_output) -> CaptureMetadata:
        meta = CaptureMetadata(saves=self._saves)
        self._saves = []
        for new in scheduler_output.scheduled_new_reqs:
            extra = new.sampling_params.extra_args if new.sampling_params else None
            plan = CapturePlan.from_params((extra or {}).get("kv_transfer_params"))
            if plan is not None:
                self._plans[new.req_id] = plan
                meta.new_plans[new.req_id] = plan
        return meta

    def request_finished(self, request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        plan = self._plans.pop(request.request_id, None)
        if plan is None:  # not ours, or aborted before it was scheduled
            return False, None
        self._saves.append(PendingSave(request.request_id, plan, list(request.prompt_token_ids or []), list(block_ids)))
        return True, None  # keep the blocks until the worker has read them

    def request_finished_all_groups(self, request, block_ids: tuple[list[int], ...]):
        if not 0 <= self._group < len(block_ids):
            return False, None
        return self.request_finished(request, block_ids[self._group])


def hidden_state_group(kv_cache_config: Any) -> int:
    """Index of the KV-cache group that holds the captured hidden states."""
    if kv_cache_config is None:
        return 0
    from vllm.v1.kv_cache_interface import HiddenStateCacheSpec

    groups = kv_cache_config.kv_cache_groups
    ids = [i for i, g in enumerate(groups) if isinstance(g.kv_cache_spec, HiddenStateCacheSpec)]
    if len(ids) == 1:
        return ids[0]
    if not ids and len(groups) == 1:
        return 0
    raise RuntimeError(f"cannot tell which of {len(groups)} KV-cache groups holds the captured hidden states")
