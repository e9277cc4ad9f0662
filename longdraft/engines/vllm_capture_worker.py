"""The worker side of the capture connector: it locks each new request's file, and when the
scheduler side hands it a finished request, gathers the request's rows from the hidden-state cache,
applies the final norm and delivers the features (shards into the store, or one spool file), then
writes the status and releases the lock. Only TP rank 0 writes."""

from __future__ import annotations

import fcntl
import json
import os

import torch

from longdraft.engines.final_norm import rms_norm
from longdraft.engines.vllm_capture_plan import features_path, lock_path, status_path
from longdraft.engines.vllm_capture_scheduler import CaptureMetadata, PendingSave


class CaptureWorker:
    def __init__(self, vllm_config, store_spec: dict | None, aux_rows: list[int], last_row: int):
        self._vllm_config = vllm_config
        self._store_spec = store_spec
        self._aux_rows = aux_rows  # our aux layers among the captured ids
        self._last_row = last_row  # the last layer's output among them
        self._target_path = vllm_config.model_config.model
        self._writes = False  # set once the caches are registered: TP rank 0 only
        self._cache: torch.Tensor | None = None
        self._locks: dict[str, int] = {}
        self._store = None
        self._norm: tuple[torch.Tensor, float, str] | None = None

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        from vllm.config import get_layers_from_vllm_config
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

    def lock_new_requests(self, meta: CaptureMetadata) -> None:
        """Lock each new request's file in the step that first schedules it, i.e. before its output
        (and so the producer's wait) can exist."""
        if not self._writes:
            return
        for req_id, plan in meta.new_plans.items():
            if req_id not in self._locks:
                fd = os.open(lock_path(plan.prefix), os.O_CREAT | os.O_WRONLY, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._locks[req_id] = fd

    def save_finished(self, meta: CaptureMetadata) -> set[str]:
        """Deliver every finished request of this step; their ids (each rank reports them, only
        rank 0 writes)."""
        if self._writes:
            for save in meta.saves:
                self._write(save)
        return {save.req_id for save in meta.saves}

    def _write(self, save: PendingSave) -> None:
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

    def _deliver(self, save: PendingSave) -> dict:
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

    def _features(self, save: PendingSave) -> dict[str, torch.Tensor]:
        assert self._cache is not None
        n = len(save.token_ids)
        block_size = self._cache.shape[2]
        slots = torch.arange(n)
        blocks = torch.tensor(save.block_ids, dtype=torch.long)[slots // block_size]
        rows = self._cache[blocks, :, slots % block_size]  # [n, captured ids, hidden]
        weight, eps, kind = self._final_norm()
        aux = rows[:, self._aux_rows].reshape(n, -1).contiguous()
        last = rms_norm(rows[:, self._last_row], weight, eps, kind).contiguous()
        return {
            "input_ids": torch.tensor(save.token_ids, dtype=torch.int64),
            "aux_hidden": aux.cpu(),
            "last_hidden": last.cpu(),
        }

    def _final_norm(self) -> tuple[torch.Tensor, float, str]:
        """(weight, eps, kind) of the target's final norm, as `TargetSpec` reads them."""
        if self._norm is None:
            from longdraft.target.spec import TargetSpec

            assert self._cache is not None
            spec = TargetSpec.load(self._target_path)
            weight = spec.final_norm_weight().to(device=self._cache.device, dtype=self._cache.dtype)  # moved once
            self._norm = weight, spec.final_norm_eps, spec.norm_kind
        return self._norm

    def _writer(self):
        if self._store is None:
            from longdraft.store.mooncake_store import MooncakeStoreOptions, MooncakeTensorStore

            if not self._store_spec:
                raise RuntimeError("a request asked for a store write but the engine was started without a store")
            self._store = MooncakeTensorStore(MooncakeStoreOptions(**self._store_spec))
        return self._store
