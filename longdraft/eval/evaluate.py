"""Load target + exported draft + prompts, run chain speculative decoding, summarise acceptance."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from longdraft.eval.errors import EvalInputError
from longdraft.eval.prompts import Prompt, load_prompts
from longdraft.eval.proposers import Eagle3Proposer, Proposer
from longdraft.eval.report import PromptOutcome, summarize
from longdraft.eval.speculative import greedy_generate, speculative_generate
from longdraft.eval.target_runner import TargetRunner, stop_token_ids


def run_prompts(
    target: TargetRunner,
    proposer: Proposer,
    prompts: list[Prompt],
    max_new_tokens: int,
    num_draft_tokens: int,
    stop_ids: Collection[int] = (),
    check_greedy: bool = False,
    progress: bool = False,
) -> list[PromptOutcome]:
    outcomes = []
    for prompt in tqdm(prompts, desc="speculative eval", unit=" prompt", disable=not progress):
        result = speculative_generate(target, proposer, prompt.input_ids, max_new_tokens, num_draft_tokens, stop_ids)
        matches = None
        if check_greedy:
            matches = result.output == greedy_generate(target, prompt.input_ids, max_new_tokens, stop_ids)
        outcomes.append(PromptOutcome(prompt.prompt_id, prompt.kind, len(prompt.input_ids), result, matches))
    return outcomes


def check_draft_fits_target(draft_dir: Path, vocab_size: int, hidden_size: int) -> None:
    from longdraft.train.export import read_export_config

    path = draft_dir / "config.json"  # named in the messages
    cfg = read_export_config(draft_dir)
    if cfg.get("vocab_size") != vocab_size:
        raise EvalInputError(
            f"{path}: vocab_size={cfg.get('vocab_size')}, but the target vocab has {vocab_size} tokens"
        )
    target_hidden = cfg.get("target_hidden_size", cfg.get("hidden_size"))
    if target_hidden != hidden_size:
        raise EvalInputError(
            f"{path}: target_hidden_size={target_hidden}, but the target's hidden size is {hidden_size}"
        )


def load_for_eval(
    target_dir: str | Path,
    draft_dir: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    aux_layers: Sequence[int] | None = None,
):
    """(target runner, proposer, tokenizer, stop ids) for speculative decoding with an export; the
    target layers are the caller's, else the ones the export says it was trained on."""
    from transformers import AutoTokenizer

    from longdraft.device import resolve_device
    from longdraft.engines.hf import load_causal_lm
    from longdraft.train.export import load_exported_draft

    device = resolve_device(device)
    model = load_causal_lm(target_dir, device, dtype)
    embedding = model.get_input_embeddings().weight
    check_draft_fits_target(
        Path(draft_dir), int(model.get_output_embeddings().weight.shape[0]), int(embedding.shape[1])
    )
    draft = load_exported_draft(draft_dir, embedding.detach().float().cpu()).to(device)
    tokenizer = AutoTokenizer.from_pretrained(target_dir, local_files_only=True)
    target = TargetRunner(model, aux_layers if aux_layers is not None else draft.config.aux_layers)
    return target, Eagle3Proposer(draft), tokenizer, stop_token_ids(model)


def run_speculative_eval(
    target_dir: str | Path,
    draft_dir: str | Path,
    data_path: str | Path,
    *,
    num_prompts: int = 16,
    max_new_tokens: int = 64,
    num_draft_tokens: int = 7,
    aux_layers: Sequence[int] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    check_greedy: bool = False,
    ignore_eos: bool = False,
    max_text_prompt_tokens: int = 128,
    progress: bool = False,
) -> dict:
    started = time.perf_counter()
    target, proposer, tokenizer, stop_ids = load_for_eval(target_dir, draft_dir, device, dtype, aux_layers)
    prompts = load_prompts(data_path, tokenizer, num_prompts, max_text_prompt_tokens)
    try:
        with torch.no_grad():
            outcomes = run_prompts(
                target,
                proposer,
                prompts,
                max_new_tokens,
                num_draft_tokens,
                set() if ignore_eos else stop_ids,
                check_greedy,
                progress,
            )
    finally:
        target.close()
    report = summarize(outcomes, num_draft_tokens)
    report.update(
        target=str(target_dir),
        draft=str(draft_dir),
        data=str(data_path),
        max_new_tokens=max_new_tokens,
        stop_at_eos=not ignore_eos,
        device=str(target.device),
        wall_s=time.perf_counter() - started,
    )
    return report
