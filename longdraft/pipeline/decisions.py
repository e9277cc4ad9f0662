"""The choices every trainer rank must share, made once by the driver (ARCHITECTURE.md, invariant 4).

A rank that resolved ``auto`` from its own device could disagree with its peers on mixed hardware:
one rank in bf16 and another in fp32, or one on a GPU and another on the CPU. The driver resolves
the device, the precision and the attention backend from the config and the placement, and hands
every rank the same concrete config. Chunk sizes, bucket sizes and the skip rule (the global loss
mask against ``training.min_loss_tokens``) come from the config alone. What depends on each device's
memory (``ring_mode: auto``) is agreed by the ranks at start-up (``attention/ring_mode.py``).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from longdraft.config import Config
from longdraft.train.step import resolve_precision


def decided_for_ranks(cfg: Config, use_gpu: bool) -> Config:
    """``cfg`` with ``training.device``, ``precision`` and ``attention_backend`` concrete, for
    trainer ranks placed with (``use_gpu``) or without a GPU each."""
    device = "cuda" if use_gpu else "cpu"
    t = cfg.training
    training = replace(
        t,
        device=device,
        precision=resolve_precision(t.precision, torch.device(device)),
        attention_backend=cfg.attention_backend,
    )
    return replace(cfg, training=training)
