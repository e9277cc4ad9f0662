"""A cluster that cannot hold the trainers as asked is the user's to fix: one line, no type name."""

import pytest

from longdraft.cli import _report
from longdraft.config import config_from_dict
from longdraft.errors import UserError
from longdraft.pipeline.placement import evaluator_gpus, gpu_shares, trainer_groups


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


def _evaluating_cfg(engine="hf", **inference):
    return config_from_dict(
        {
            "data": {"train_path": "t.jsonl"},
            "model": {"target_path": "t"},
            "training": {"num_trainers": 4, "sp_ulysses_size": 4, "batch_size": 4, "device": "cuda"},
            "inference": {"engine": engine, **inference},
            "eval": {"every": 10, "context_lengths": [256]},
            "output": {"dir": "o"},
        }
    )


def _shares_with_evaluator(cfg, cluster_gpus):
    use_gpu, trainer, producer = gpu_shares(cfg, cluster_gpus)
    return trainer, producer, evaluator_gpus(cfg, cluster_gpus, trainer, producer)


def test_the_tau_evaluator_gets_gpus_that_exist_or_the_run_is_refused_at_start():
    # HF producers: whole GPUs only when one is left for the evaluator too, else everyone shares.
    assert _shares_with_evaluator(_evaluating_cfg(), cluster_gpus=6) == (1.0, 1.0, 1.0)
    assert _shares_with_evaluator(_evaluating_cfg(), cluster_gpus=5) == (0.75, 0.25, 0.25)
    assert _shares_with_evaluator(_evaluating_cfg(gpus_per_producer=0), cluster_gpus=4) == (1.0, 0, 0.0)
    # vLLM producers take whole GPUs; the evaluator (an HF target) takes one more.
    assert _shares_with_evaluator(_evaluating_cfg("vllm", num_producers=2), cluster_gpus=7) == (1.0, 1.0, 1.0)
    with pytest.raises(UserError) as short:
        _shares_with_evaluator(_evaluating_cfg("vllm", num_producers=2), cluster_gpus=6)
    assert _report(short.value) == (
        "longdraft: error: eval.every = 10: the τ evaluator needs 1 GPU besides the 6 of 4 trainers and 2 producers, "
        "but the Ray cluster has 6: lower inference.num_producers, or set eval.every = 0 (τ by context length is "
        "still measured after training)"
    )
    with pytest.raises(UserError, match="needs 1 GPU besides the 5"):
        _shares_with_evaluator(_evaluating_cfg(gpus_per_producer=1), cluster_gpus=5)
