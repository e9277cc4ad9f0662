"""The one place that builds a target engine, from ``inference.engine``."""

from __future__ import annotations

import torch

from longdraft.config import Config
from longdraft.engines.base import TargetEngine
from longdraft.store.base import TensorStore

ENGINES = ("hf", "vllm")


def build_engine(
    cfg: Config, device: torch.device, output_device: torch.device | None = None, store: TensorStore | None = None
) -> TargetEngine:
    """The configured engine on ``device``; features are handed out on ``output_device``
    (default: ``device``). An engine that can write shards itself (vLLM) writes into ``store``."""
    name = cfg.inference.engine
    if name == "hf":
        from longdraft.engines.hf import HFTargetEngine, hf_device_map

        device_map = hf_device_map(cfg.inference.device_map, device, _producer_gpus(cfg, device, output_device))
        return HFTargetEngine(
            cfg.model.target_path,
            cfg.model.aux_layers,
            device,
            cfg.model.target_dtype,
            output_device=output_device,
            device_map=device_map,
        )
    if name == "vllm":
        from longdraft.engines.vllm_engine import VLLMTargetEngine

        inf = cfg.inference
        return VLLMTargetEngine(
            cfg.model.target_path,
            cfg.model.aux_layers,
            cfg.model.target_dtype,
            max_length=cfg.training.max_seq_length,
            store=store,
            max_num_batched_tokens=inf.max_num_batched_tokens,
            kv_cache_mb=inf.kv_cache_mb,
            batch_size=inf.batch_size,
            gpu_memory=device_memory(device, inf.tensor_parallel_size),
            gpu_memory_utilization=inf.gpu_memory_utilization,
            tensor_parallel_size=inf.tensor_parallel_size,
            enforce_eager=inf.enforce_eager,
        )
    raise ValueError(f"inference.engine={name!r} is not one of {ENGINES}")


def _producer_gpus(cfg: Config, device: torch.device, output_device: torch.device | None) -> float:
    """GPUs this engine may spread over: those a pipeline producer was given (its features go out to
    another device), never the other GPUs of a local run."""
    if device.type != "cuda" or output_device is None or output_device == device:
        return 1
    return min(cfg.inference.gpus_per_producer or 1, torch.cuda.device_count())


def device_memory(device: torch.device, gpus: int):
    """The least free and total memory over the first ``gpus`` visible GPUs; None off CUDA."""
    from longdraft.engines.vllm_memory import DeviceMemory

    if device.type != "cuda":
        return None
    infos = [torch.cuda.mem_get_info(i) for i in range(min(gpus, torch.cuda.device_count()))]
    return DeviceMemory(free=min(f for f, _ in infos), total=min(t for _, t in infos))
