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

vLLM builds one connector per role, as its own connectors are split: this class only hands each
call to its role's object, `CaptureScheduler` (``vllm_capture_scheduler.py``) or `CaptureWorker`
(``vllm_capture_worker.py``). The module is imported by vLLM in its own processes, so it must not
need anything but longdraft, torch and vLLM.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.config import VllmConfig
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    SupportsHMA,
)

from longdraft.engines.vllm_capture_scheduler import CaptureScheduler
from longdraft.engines.vllm_capture_worker import CaptureWorker


class LongdraftCaptureConnector(KVConnectorBase_V1, SupportsHMA):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: Any = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.scheduler: CaptureScheduler | None = None
        self.worker: CaptureWorker | None = None
        if role == KVConnectorRole.SCHEDULER:
            self.scheduler = CaptureScheduler(kv_cache_config)
        else:
            extra = self._kv_transfer_config.kv_connector_extra_config or {}
            aux_rows, last_row = list(extra.get("aux_rows", [0, 1, 2])), int(extra.get("last_row", 3))
            self.worker = CaptureWorker(vllm_config, extra.get("store"), aux_rows, last_row)

    def get_finished_count(self) -> int:
        return 1  # only TP rank 0 writes, so one notice per request

    # -- scheduler side --

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int) -> tuple[int | None, bool]:
        return 0, False  # nothing is ever loaded

    def update_state_after_alloc(self, request, blocks, num_external_tokens: int) -> None:
        pass

    def build_connector_meta(self, scheduler_output) -> KVConnectorMetadata:
        assert self.scheduler is not None
        return self.scheduler.build_connector_meta(scheduler_output)

    def request_finished(self, request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        assert self.scheduler is not None
        return self.scheduler.request_finished(request, block_ids)

    def request_finished_all_groups(self, request, block_ids: tuple[list[int], ...]):
        assert self.scheduler is not None
        return self.scheduler.request_finished_all_groups(request, block_ids)

    # -- worker side --

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        assert self.worker is not None
        self.worker.register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        pass

    def wait_for_layer_load(self, layer_name: str) -> None:
        pass

    def save_kv_layer(self, layer_name: str, kv_layer, attn_metadata, **kwargs: Any) -> None:
        pass  # the capture layer itself filled the cache during the forward pass

    def wait_for_save(self) -> None:
        assert self.worker is not None
        if self.has_connector_metadata():
            self.worker.lock_new_requests(self._get_connector_metadata())

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self.worker is not None
        done = self.worker.save_finished(self._get_connector_metadata()) if self.has_connector_metadata() else set()
        return done or None, None
