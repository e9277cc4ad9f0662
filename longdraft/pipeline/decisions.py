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
from longdraft.errors import UserError
from longdraft.train.step import resolve_precision


def trainer_device(use_gpu: bool, sees_cuda: list[bool]) -> str:
    """The device of every trainer rank: ``cuda`` when the placement gave each a GPU and each one
    sees it, ``cpu`` when none does (GPUs declared as Ray resources on a machine without CUDA, as the
    loopback test clusters do). Ranks that disagree are refused: one device kind for all."""
    if not use_gpu or not any(sees_cuda):
        return "cpu"
    if not all(sees_cuda):
        blind = [rank for rank, sees in enumerate(sees_cuda) if not sees]
        raise UserError(
            f"trainer ranks {blind} were placed on a GPU but see no CUDA device, while the others do; "
            "every trainer rank must train on the same kind of device (check the nodes' drivers and "
            "CUDA_VISIBLE_DEVICES)"
        )
    return "cuda"


def decided_for_ranks(cfg: Config, device: str) -> Config:
    """``cfg`` with ``training.device`` (``trainer_device``), ``precision`` and ``attention_backend``
    concrete, the same for every trainer rank."""
    t = cfg.training
    training = replace(
        t,
        device=device,
        precision=resolve_precision(t.precision, torch.device(device)),
        attention_backend=cfg.attention_backend,
    )
    return replace(cfg, training=training)
