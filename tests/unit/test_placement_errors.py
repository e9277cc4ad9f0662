"""A cluster that cannot hold the trainers as asked is the user's to fix: one line, no type name."""

import pytest

from longdraft.cli import _report
from longdraft.config import config_from_dict
from longdraft.errors import UserError
from longdraft.pipeline.placement import gpu_shares, trainer_groups


def _cfg(**training):
    return config_from_dict(
        {
            "data": {"train_path": "t.jsonl"},
            "model": {"target_path": "t"},
            "training": {"num_trainers": 4, "sp_ulysses_size": 4, "batch_size": 4, **training},
            "output": {"dir": "o"},
        }
    )


def test_placement_mistakes_are_user_errors_printed_as_one_line():
    with pytest.raises(UserError) as no_gpu:
        gpu_shares(_cfg(device="cuda"), cluster_gpus=0)
    assert _report(no_gpu.value) == "longdraft: error: training.device=cuda, but the Ray cluster has no GPU resources"
    with pytest.raises(UserError) as too_small:
        trainer_groups(_cfg(), per_node_capacity=2)
    assert _report(too_small.value) == (
        "longdraft: error: a Ulysses group of 4 trainer ranks must sit on one node, but the largest node holds 2 of them"
    )
    assert trainer_groups(_cfg(), per_node_capacity=4) == [[0, 1, 2, 3]]
