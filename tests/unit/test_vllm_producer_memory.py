"""vLLM producers for real targets, decided before vLLM or Ray is touched: the arguments vLLM gets
for a device's memory, the producers it refuses with the sizes, and where producers are placed."""

from __future__ import annotations

import json

import pytest
from transformers import LlamaConfig

from longdraft.config import config_from_dict
from longdraft.engines.vllm_memory import (
    DeviceMemory,
    GiB,
    check_gpu_fits,
    gpu_kv_budget,
    kv_bytes_per_token,
    vllm_memory_kwargs,
    weights_bytes,
)
from longdraft.engines.vllm_settings import default_kv_cache_bytes, vllm_capture_ids
from longdraft.errors import UserError
from longdraft.pipeline.placement import PlacementError, gpu_shares
from longdraft.target.spec import TargetSpec

_LLAMA_8B = {  # Llama-3.1-8B's config.json, the keys that size it
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "torch_dtype": "bfloat16",
}
LLAMA_8B = TargetSpec.from_config(LlamaConfig(**_LLAMA_8B))
LLAMA_8B_WEIGHTS = 16_060_522_496  # its model.safetensors.index.json total_size
LLAMA_70B = TargetSpec.from_config(
    LlamaConfig(**{**_LLAMA_8B, "hidden_size": 8192, "num_attention_heads": 64, "num_hidden_layers": 80})
)
LLAMA_70B_WEIGHTS = 141_107_412_992
H100 = DeviceMemory(free=80 * GiB, total=80 * GiB)
CONTEXT = 131072 + 1  # 128K prompts and the one generated token


def _kwargs(memory, **over):
    args = dict(utilization=0.9, tensor_parallel=1, enforce_eager="auto", kv_cache_mb=None, default_kv_bytes=123)
    return vllm_memory_kwargs(memory, **{**args, **over})


def test_gpu_kv_budget_comes_from_the_device_not_from_the_batch():
    captured = len(vllm_capture_ids([1, 15, 28], 32)[0])  # the default aux layers and the last layer
    per_token = kv_bytes_per_token(LLAMA_8B, captured, 2)
    assert per_token == 2 * (32 * 2 * 8 * 128 + 4 * 4096) == 160 * 1024
    # The old default, twice a batch of 4 at 128K: 160 GiB, more than the GPU has.
    assert default_kv_cache_bytes(LLAMA_8B, captured, 2, 4 * CONTEXT) / GiB == pytest.approx(160.0, abs=0.01)
    budget = gpu_kv_budget(H100, 0.9, LLAMA_8B_WEIGHTS, 1)
    assert budget == int(0.9 * 80 * GiB) - LLAMA_8B_WEIGHTS
    assert budget / GiB == pytest.approx(57.04, abs=0.01)  # 2.8 sequences of 128K (20 GiB each)
    check_gpu_fits(H100, 0.9, LLAMA_8B_WEIGHTS, per_token, CONTEXT, 1)
    # On GPU vLLM sizes the cache itself from gpu_memory_utilization; no batch-sized override.
    assert _kwargs(H100) == {"enforce_eager": False, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9}


def test_cpu_keeps_the_two_batch_cache_and_eager_mode():
    assert _kwargs(None) == {"enforce_eager": True, "tensor_parallel_size": 1, "kv_cache_memory_bytes": 123}
    assert _kwargs(None, kv_cache_mb=64)["kv_cache_memory_bytes"] == 64 << 20
    assert _kwargs(H100, kv_cache_mb=64)["kv_cache_memory_bytes"] == 64 << 20  # an explicit size wins on GPU
    assert _kwargs(H100, enforce_eager=True)["enforce_eager"] is True
    assert _kwargs(None, enforce_eager=False)["enforce_eager"] is False
    tp = _kwargs(H100, tensor_parallel=4)
    assert tp["tensor_parallel_size"] == 4 and tp["distributed_executor_backend"] == "mp"


def test_a_gpu_held_by_another_process_is_refused_with_the_sizes():
    shared = DeviceMemory(free=60 * GiB, total=80 * GiB)  # a trainer holds 20 GiB
    with pytest.raises(UserError, match=r"has 60.0 GiB free of 80.0 GiB, less than .* = 0.9 of it \(72.0 GiB\)"):
        check_gpu_fits(shared, 0.9, LLAMA_8B_WEIGHTS, 1, 10, 1)
    check_gpu_fits(shared, 0.7, LLAMA_8B_WEIGHTS, 1, 10, 1)  # 56 GiB fits in what is free


def test_a_target_that_does_not_fit_is_refused_with_the_sizes():
    per_token = {tp: kv_bytes_per_token(LLAMA_70B, 4, 2, tp) for tp in (1, 2, 4)}
    with pytest.raises(UserError, match=r"weights \(131.4 GiB, 131.4 GiB per GPU .* = 1\) do not fit .*72.0 GiB"):
        check_gpu_fits(H100, 0.9, LLAMA_70B_WEIGHTS, per_token[1], CONTEXT, 1)
    # Two GPUs hold the weights but not one 128K sequence's KV cache (28.0 GiB, 6.3 GiB left).
    with pytest.raises(UserError, match=r"one sequence of 131073 tokens needs 28.0 GiB .* only 6.3 GiB"):
        check_gpu_fits(H100, 0.9, LLAMA_70B_WEIGHTS, per_token[2], CONTEXT, 2)
    check_gpu_fits(H100, 0.9, LLAMA_70B_WEIGHTS, per_token[4], CONTEXT, 4)
    check_gpu_fits(H100, 0.9, None, per_token[1], CONTEXT, 1)  # no safetensors: only the free-memory check


def test_weights_from_the_safetensors_index_or_files_in_the_runs_dtype(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1000}}))
    assert weights_bytes(tmp_path, "bfloat16", 2) == 1000
    assert weights_bytes(tmp_path, "float32", 2) == 500  # an fp32 checkpoint run in bf16
    single = tmp_path / "one"
    single.mkdir()
    assert weights_bytes(single, "float32", 4) is None
    (single / "model.safetensors").write_bytes(b"x" * 400)
    assert weights_bytes(single, "float32", 4) == 400


def _cfg(engine="vllm", **inference):
    return config_from_dict(
        {
            "data": {"train_path": "t.jsonl"},
            "model": {"target_path": "t"},
            "training": {"num_trainers": 4, "sp_ulysses_size": 4, "batch_size": 4, "device": "cuda"},
            "inference": {"engine": engine, **inference},
            "output": {"dir": "o"},
        }
    )


def test_a_vllm_producer_never_shares_a_trainers_gpu():
    with pytest.raises(PlacementError, match=r"gpus_per_producer = 0.25: a vLLM producer cannot share a trainer"):
        gpu_shares(_cfg(gpus_per_producer=0.25), cluster_gpus=8)
    with pytest.raises(PlacementError, match=r"2 vLLM producers of 2 GPUs each .* \(8 in all\), .* has 6"):
        gpu_shares(_cfg(num_producers=2, tensor_parallel_size=2), cluster_gpus=6)
    with pytest.raises(PlacementError, match=r"gpus_per_producer = 1.0 but inference.tensor_parallel_size = 2"):
        gpu_shares(_cfg(gpus_per_producer=1, tensor_parallel_size=2), cluster_gpus=8)
    # auto: the producer's bundle is its tensor-parallel GPUs; the trainers keep whole GPUs.
    assert gpu_shares(_cfg(num_producers=2, tensor_parallel_size=2), cluster_gpus=8) == (True, 1.0, 2.0)
    assert gpu_shares(_cfg(), cluster_gpus=5) == (True, 1.0, 1.0)
    assert gpu_shares(_cfg(gpus_per_producer=0), cluster_gpus=4) == (True, 1.0, 0)  # producers on CPU
    assert gpu_shares(_cfg("hf"), cluster_gpus=4) == (True, 0.75, 0.25)  # HF producers may still share


def test_a_config_that_shares_is_refused_before_ray_starts(tiny_target, tmp_path):
    from longdraft.run import run_training

    data = tmp_path / "train.jsonl"
    data.write_text("")
    cfg = config_from_dict(
        {
            "data": {"train_path": str(data)},
            "model": {"target_path": str(tiny_target())},
            "training": {"num_trainers": 2, "sp_ulysses_size": 2, "batch_size": 2, "device": "cuda"},
            "inference": {"engine": "vllm", "gpus_per_producer": 0.25},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        }
    )
    with pytest.raises(UserError, match="a vLLM producer cannot share a trainer's GPU"):
        run_training(cfg)
    assert not (tmp_path / "run").exists()  # nothing written, nothing started
