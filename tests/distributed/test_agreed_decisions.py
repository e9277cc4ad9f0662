"""Cross-rank decisions are made once: two gloo ranks whose devices differ in memory
(a mixed cluster, MIG slices) agree on ``ring_mode: auto``, which picks their collectives: a rank
that gathered while its peer rotated the ring would hang until the collective timeout."""

import pytest
import torch

from longdraft.attention.ring_mode import agreed_ring_mode, gathered_kv_bytes
from longdraft.config.schema import TrainingConfig
from longdraft.parallel.agree import agree_max, agree_min
from longdraft.parallel.launch import run_ranks
from longdraft.target.spec import TargetSpec
from tests.draft_factory import tiny_target_config


def _training(mode: str = "auto") -> TrainingConfig:
    return TrainingConfig(max_seq_length=4096, sp_ulysses_size=1, sp_ring_size=2, num_trainers=2, ring_mode=mode)


def _worker(rank, world):
    torch.set_num_threads(1)
    text = TargetSpec.from_config(tiny_target_config())
    need = gathered_kv_bytes(_training(), text, "fp32")
    # Rank 0's device is too small to gather the K/V, rank 1's is large enough: on its own, each
    # would choose differently.
    own_budget = [need - 1, need + 1][rank]
    cpu = torch.device("cpu")
    return {
        "auto": agreed_ring_mode(_training(), text, "fp32", cpu, local_budget=own_budget),
        "explicit": agreed_ring_mode(_training("gather"), text, "fp32", cpu, local_budget=own_budget),
        "min_max": (agree_min(10 + rank, cpu), agree_max(10 + rank, cpu)),
    }


@pytest.mark.timeout(120)
def test_ranks_with_different_memory_agree_on_the_ring_mode():
    results = run_ranks(_worker, 2, timeout_s=90)
    # The smallest device decides for all: both rotate the ring (rank 1 alone would have gathered).
    assert [r["auto"] for r in results] == ["ring", "ring"]
    assert [r["explicit"] for r in results] == ["gather", "gather"]  # the config's choice, no agreement needed
    assert [r["min_max"] for r in results] == [(10, 11), (10, 11)]
