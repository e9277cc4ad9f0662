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
        from longdraft.engines.hf import HFTargetEngine

        return HFTargetEngine(
            cfg.model.target_path, cfg.model.aux_layers, device, cfg.model.target_dtype, output_device=output_device
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
        )
    raise ValueError(f"inference.engine={name!r} is not one of {ENGINES}")
