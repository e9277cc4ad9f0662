"""The one place that builds a target engine, from ``inference.engine``."""

from __future__ import annotations

import torch

from longdraft.config import Config
from longdraft.engines.base import TargetEngine

ENGINES = ("hf",)


def build_engine(cfg: Config, device: torch.device, output_device: torch.device | None = None) -> TargetEngine:
    """The configured engine on ``device``; features are handed out on ``output_device``
    (default: ``device``)."""
    name = cfg.inference.engine
    if name == "hf":
        from longdraft.engines.hf import HFTargetEngine

        return HFTargetEngine(cfg.model.target_path, cfg.model.aux_layers, device, cfg.model.target_dtype,
                              output_device=output_device)
    raise ValueError(f"inference.engine={name!r} is not one of {ENGINES}")
