"""A vLLM KV connector that turns a finished prefill's captured hidden states into longdraft
features, inside vLLM's worker process.

vLLM's ``extract_hidden_states`` speculative method caches, per token, the residual stream at the
layer ids it is given (id ``k`` = input of layer ``k``) in a paged cache that only this connector
reads. When a request finishes, its rows are gathered from that cache and, per request:

- **store mode** (``plan["key"]`` set): split into one shard per SP rank with the request's
  `ShardLayout` and put straight into the tensor store from this process (Mooncake), so the
  whole sequence's features never travel to the producer;
- **hand-back mode**: written whole as one safetensors file in the engine's spool folder
  (``/dev/shm`` where it exists, so the "file" is shared memory).

Either way a small JSON status file says what happened, and the request's ``.lock`` file, held
exclusively from the step the request was first scheduled until that status is written, lets the
producer wait without polling vLLM: the kernel drops the lock if this process dies, and a status
file that is then missing names the death.

The module is imported by vLLM in its own processes (scheduler and worker roles), so it must not
need anything but longdraft, torch and vLLM.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.config import VllmConfig, get_layers_from_vllm_config
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    SupportsHMA,
)

PLAN_KEY = "longdraft"  # the entry of a request's kv_transfer_params that carries its capture plan


@dataclass
class CapturePlan:
    """What to do with one request's features (travels from the producer in kv_transfer_params)."""

    prefix: str  # spool path without suffix: .lock, .json, .safetensors
    key: str | None = None  # store key: write shards there (store mode); None: hand back
    layout: dict | None = None  # ShardLayout fields, for store mode

    @classmethod
    def from_params(cls, params: dict | None) -> CapturePlan | None:
        plan = (params or {}).get(PLAN_KEY)
        return cls(**plan) if plan else None

    def as_params(self) -> dict:
        return {PLAN_KEY: {"prefix": self.prefix, "key": self.key, "layout": self.layout}}


@dataclass
class _Save:
    req_id: str
    plan: CapturePlan
    token_ids: list[int]
    block_ids: list[int]


@dataclass
class CaptureMetadata(KVConnectorMetadata):
    saves: list[_Save] = field(default_factory=list)
    new_plans: dict[str, CapturePlan] = field(default_factory=dict)  # lock these before outputs return


def lock_path(prefix: str) -> str:
    return prefix + ".lock"


def status_path(prefix: str) -> str:
    return prefix + ".json"


def features_path(prefix: str) -> str:
    return prefix + ".safetensors"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The target's final RMSNorm, computed as HF Llama/Qwen do (fp32 statistics)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(x.dtype) * h.to(x.dtype)


class LongdraftCaptureConnector(KVConnectorBase_V1, SupportsHMA):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: Any = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        self._store_spec: dict | None = extra.get("store")
        self._aux_rows: list[int] = list(extra.get("aux_rows", [0, 1, 2]))  # our aux layers among the captured ids
        self._last_row: int = int(extra.get("last_row", 3))  # the last layer's output among them
        self._group = _hidden_state_group(kv_cache_config)
        # scheduler side
        self._plans: dict[str, CapturePlan] = {}
        self._saves: list[_Save] = []
        # worker side
        self._cache: torch.Tensor | None = None
        self._locks: dict[str, int] = {}
        self._store = None
        self._norm: tuple[torch.Tensor, float] | None = None
        self._target_path = vllm_config.model_config.model

    def get_finished_count(self) -> int:
        return 1  # only TP rank 0 writes, so one notice per request

    # -- scheduler side --

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int) -> tuple[int | None, bool]:
        return 0, False  # nothing is ever loaded

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int) -> None:
        pass

    def build_connector_meta(self, scheduler_output) -> KVConnectorMetadata:
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
        self._saves.append(_Save(request.request_id, plan, list(request.prompt_token_ids or []), list(block_ids)))
        return True, None  # keep the blocks until the worker has read them

    def request_finished_all_groups(self, request, block_ids: tuple[list[int], ...]):
        if not 0 <= self._group < len(block_ids):
            return False, None
        return self.request_finished(request, block_ids[self._group])

    # -- worker side --

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        from vllm.model_executor.models.extract_hidden_states import CacheOnlyAttentionLayer

        self._writes = get_tensor_model_parallel_rank() == 0
        names = list(get_layers_from_vllm_config(self._vllm_config, CacheOnlyAttentionLayer, list(kv_caches)))
        if len(names) != 1:
            raise RuntimeError(
                f"expected one hidden-state cache layer, found {names}: is the speculative "
                "method 'extract_hidden_states'?"
            )
        self._cache = kv_caches[names[0]]  # [blocks, captured ids, block_size, hidden]

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        pass

    def wait_for_layer_load(self, layer_name: str) -> None:
        pass

    def save_kv_layer(self, layer_name: str, kv_layer, attn_metadata, **kwargs: Any) -> None:
        pass  # the capture layer itself filled the cache during the forward pass

    def wait_for_save(self) -> None:
        """Lock each new request's file in the step that first schedules it, i.e. before its output
        (and so the producer's wait) can exist."""
        if not getattr(self, "_writes", True) or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        for req_id, plan in getattr(meta, "new_plans", {}).items():
            if req_id not in self._locks:
                fd = os.open(lock_path(plan.prefix), os.O_CREAT | os.O_WRONLY, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._locks[req_id] = fd

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        done: set[str] = set()
        if self.has_connector_metadata():
            for save in getattr(self._get_connector_metadata(), "saves", []):
                if getattr(self, "_writes", True):
                    self._write(save)
                done.add(save.req_id)
        return done or None, None

    def _write(self, save: _Save) -> None:
        try:
            status = self._deliver(save)
        except Exception as e:  # the producer raises it with the request's key
            status = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        tmp = status_path(save.plan.prefix) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(status, f)
        os.replace(tmp, status_path(save.plan.prefix))
        fd = self._locks.pop(save.req_id, None)
        if fd is not None:
            os.close(fd)  # releases the lock: the producer reads the status now

    def _deliver(self, save: _Save) -> dict:
        features = self._features(save)
        plan = save.plan
        if plan.key is None:
            from safetensors.torch import save_file

            save_file(features, features_path(plan.prefix))
            return {"ok": True, "length": len(save.token_ids)}
        from longdraft.engines.base import tensor_specs
        from longdraft.sharding.layout import ShardLayout
        from longdraft.sharding.split import split_sample
        from longdraft.store.base import shard_nbytes

        shards = split_sample(features, ShardLayout(**plan.layout))
        handle = self._writer().put_sample(plan.key, shards)
        shapes, dtypes = tensor_specs(features)
        return {
            "ok": True,
            "length": len(save.token_ids),
            "shard_nbytes": list(handle.shard_nbytes),
            "bytes_put": sum(shard_nbytes(s) for s in shards),
            "shapes": shapes,
            "dtypes": dtypes,
        }

    def _features(self, save: _Save) -> dict[str, torch.Tensor]:
        assert self._cache is not None
        n = len(save.token_ids)
        block_size = self._cache.shape[2]
        slots = torch.arange(n)
        blocks = torch.tensor(save.block_ids, dtype=torch.long)[slots // block_size]
        rows = self._cache[blocks, :, slots % block_size]  # [n, captured ids, hidden]
        weight, eps = self._final_norm()
        aux = rows[:, self._aux_rows].reshape(n, -1).contiguous()
        last = rms_norm(rows[:, self._last_row], weight, eps).contiguous()
        return {
            "input_ids": torch.tensor(save.token_ids, dtype=torch.int64),
            "aux_hidden": aux.cpu(),
            "last_hidden": last.cpu(),
        }

    def _final_norm(self) -> tuple[torch.Tensor, float]:
        if self._norm is None:
            from longdraft.engines.head_weights import load_final_norm

            self._norm = load_final_norm(self._target_path)
        return self._norm

    def _writer(self):
        if self._store is None:
            from longdraft.store.mooncake_store import MooncakeStoreOptions, MooncakeTensorStore

            if not self._store_spec:
                raise RuntimeError("a request asked for a store write but the engine was started without a store")
            self._store = MooncakeTensorStore(MooncakeStoreOptions(**self._store_spec))
        return self._store


def _hidden_state_group(kv_cache_config: Any) -> int:
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
