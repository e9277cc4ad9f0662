"""The driver decides what every trainer rank must share: device, precision and
attention backend reach the ranks concrete, so no rank resolves ``auto`` from its own device."""

import pytest
import torch

from longdraft.config.schema import Config, TrainingConfig
from longdraft.errors import UserError
from longdraft.pipeline.decisions import decided_for_ranks, trainer_device
from longdraft.train.step import StepSettings


def _cfg(**training) -> Config:
    return Config(training=TrainingConfig(num_trainers=2, sp_ring_size=2, **training))


def test_auto_is_resolved_once_from_the_placement():
    cfg = _cfg()
    on_gpus = decided_for_ranks(cfg, "cuda").training
    assert (on_gpus.device, on_gpus.precision, on_gpus.attention_backend) == ("cuda", "bf16", "usp")
    on_cpus = decided_for_ranks(cfg, "cpu").training
    assert (on_cpus.device, on_cpus.precision, on_cpus.attention_backend) == ("cpu", "fp32", "usp")
    assert (cfg.training.device, cfg.training.precision, cfg.training.attention_backend) == ("auto", "auto", "auto")
    assert decided_for_ranks(_cfg(precision="fp32"), "cuda").training.precision == "fp32"


def test_a_ranks_own_device_no_longer_changes_its_precision():
    """A rank that finds itself on the CPU (or any other device) still steps in the precision the
    driver chose for all; resolving ``auto`` per rank gave it fp32 while its peers ran bf16."""
    decided = decided_for_ranks(_cfg(), "cuda")
    assert StepSettings.from_config(decided, torch.device("cpu")).precision == "bf16"
    assert StepSettings.from_config(_cfg(), torch.device("cpu")).precision == "fp32"  # what a rank alone decides


def test_the_device_is_what_every_placed_rank_sees():
    assert trainer_device(use_gpu=True, sees_cuda=[True, True]) == "cuda"
    assert trainer_device(use_gpu=False, sees_cuda=[True, True]) == "cpu"
    # GPUs declared as Ray resources on a machine without CUDA (the loopback test clusters): all on the CPU
    assert trainer_device(use_gpu=True, sees_cuda=[False, False]) == "cpu"
    with pytest.raises(UserError, match=r"trainer ranks \[1\] were placed on a GPU but see no CUDA"):
        trainer_device(use_gpu=True, sees_cuda=[True, False])
