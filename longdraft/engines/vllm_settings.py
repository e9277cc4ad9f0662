"""What a vLLM engine is started with, as pure functions: the layer ids it captures, its dtype and
the CPU default of its KV cache (the engine in ``vllm_engine.py``, the server in ``eval/vllm_serve.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from longdraft.engines.vllm_memory import kv_bytes_per_token
from longdraft.target.spec import TargetSpec

_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def vllm_capture_ids(aux_layers: Sequence[int], num_layers: int) -> tuple[list[int], list[int], int]:
    """(vLLM ids to capture, distinct and ascending; the rows of our aux layers among them; the row
    of the last layer's output). Our output of layer ``i`` is vLLM's id ``i + 1``; id ``N`` is the
    last layer's output, which is also an aux layer when ``N - 1`` is one."""
    ids = sorted({i + 1 for i in aux_layers} | {num_layers})
    return ids, [ids.index(i + 1) for i in sorted(aux_layers)], ids.index(num_layers)


def default_kv_cache_bytes(target: TargetSpec, captured: int, dtype_bytes: int, tokens: int) -> int:
    """The CPU default: KV cache for ``tokens`` tokens in flight, twice over (at least 64 MiB)."""
    return max(64 << 20, 2 * tokens * kv_bytes_per_token(target, captured, dtype_bytes))


def vllm_dtype(dtype: str, checkpoint_dtype: str) -> str:
    """Our ``auto | fp32 | bf16`` as vLLM's dtype. ``auto`` is the checkpoint's own dtype
    (`TargetSpec.dtype`), as in HF: vLLM's own "auto" would run an fp32 checkpoint in half precision."""
    if dtype == "auto":
        return checkpoint_dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def dtype_bytes(vllm_dtype_name: str) -> int:
    return 4 if vllm_dtype_name == "float32" else 2
