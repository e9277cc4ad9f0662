"""The vLLM engine's settings, computed before vLLM is touched: dtypes, layer ids, cache size."""

import pytest
from transformers import Gemma3Config, LlamaConfig

from longdraft.engines.vllm_settings import default_kv_cache_bytes, vllm_capture_ids, vllm_dtype
from longdraft.target.spec import TargetSpec


def _dtype(config) -> str:
    return TargetSpec.from_config(config).dtype


def test_auto_dtype_is_the_checkpoints_own():
    # vLLM's own "auto" would serve an fp32 checkpoint in half precision, so it is never passed on.
    assert vllm_dtype("auto", _dtype(LlamaConfig(dtype="float32"))) == "float32"
    assert vllm_dtype("auto", _dtype(LlamaConfig(torch_dtype="bfloat16"))) == "bfloat16"
    assert vllm_dtype("auto", _dtype(Gemma3Config(text_config={"dtype": "float16"}))) == "float16"
    assert vllm_dtype("auto", _dtype(LlamaConfig())) == "float32"
    assert vllm_dtype("bf16", "float32") == "bfloat16"
    with pytest.raises(ValueError, match="dtype='fp16': expected one of auto, fp32, bf16"):
        vllm_dtype("fp16", "float32")


def test_capture_ids_are_inputs_of_the_next_layer_plus_the_last_output():
    assert vllm_capture_ids([1, 3, 4], 8) == ([2, 4, 5, 8], [0, 1, 2], 3)
    # vLLM captures an id once: the last layer as an aux layer shares the last hidden state's row.
    assert vllm_capture_ids([7, 0, 6], 8) == ([1, 7, 8], [0, 1, 2], 2)


def test_kv_cache_holds_two_batches_of_layers_and_captured_rows():
    text = TargetSpec.from_config(
        LlamaConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=8)
    )
    per_token = 4 * (8 * 2 * 1 * 32 + 4 * 64)
    assert default_kv_cache_bytes(text, 4, 4, 100_000) == 2 * 100_000 * per_token
    assert default_kv_cache_bytes(text, 4, 4, 10) == 64 << 20  # never below 64 MiB


def test_a_call_whose_process_dies_raises_instead_of_waiting_forever():
    import subprocess
    import threading

    from longdraft.engines.watchdog import ProcessDied, call_watched, child_pids, new_children

    before = child_pids()
    proc = subprocess.Popen(["sleep", "30"])
    watched = new_children(before)
    assert [label.split()[0] for _, label in watched] == ["sleep"]
    never = threading.Event()
    threading.Timer(0.2, proc.kill).start()
    with pytest.raises(ProcessDied, match=rf"sleep \(pid {proc.pid}\)"):
        call_watched(never.wait, watched, poll_s=0.05, grace_s=0.1)  # blocks like vLLM's client does
    proc.wait()
    assert call_watched(lambda: 42, watched) == 42  # a call that returns is not second-guessed
