"""Real τ by context length for draft weights in memory: the target, tokenizer and prompts are
loaded once, then every `measure` runs `longdraft eval`'s context evaluation (same prompts, same
decoding, same counts) on the draft it is given, during training.

``measure`` takes the export in memory (`train/export.py: exported_state`), so the draft it decodes
with is exactly the one `export_draft` would write at that step.
"""

from __future__ import annotations

import time

import torch

from longdraft.config import Config
from longdraft.eval.context import check_context_fits
from longdraft.eval.context_prompts import context_prompts, document_ids
from longdraft.eval.evaluate import run_prompts
from longdraft.eval.proposers import Eagle3Proposer
from longdraft.eval.report import summarize
from longdraft.eval.target_runner import TargetRunner, stop_token_ids


def context_data_path(cfg: Config) -> str:
    """Where the after-training context evaluation cuts its prompts: eval.context_path, else the
    held-out file, else the training data."""
    return cfg.eval.context_path or cfg.data.eval_path or cfg.data.train_path


def tau_metrics(by_length: list[dict]) -> dict:
    """``tau@L`` per length, with the counts behind it (``tau_tokens@L`` emitted, ``tau_steps@L``
    verification steps)."""
    out = {}
    for r in by_length:
        n = r["context_length"]
        out[f"tau@{n}"] = r["acceptance_length"]
        out[f"tau_tokens@{n}"] = r["new_tokens"]
        out[f"tau_steps@{n}"] = r["verify_steps"]
    return out


class ContextTauMeter:
    """``model``: a target already loaded on ``device`` (one device's HF engine) to decode with, instead
    of a second copy of the target."""

    def __init__(self, cfg: Config, device: torch.device | str, model=None):
        from transformers import AutoTokenizer

        from longdraft.device import resolve_device
        from longdraft.engines.hf import load_causal_lm

        e = cfg.eval
        self.device = resolve_device(str(device))
        self.lengths = sorted({int(n) for n in e.context_lengths})
        self.max_new_tokens, self.num_draft_tokens = e.max_new_tokens, cfg.training.ttt_length
        self.model = (
            model if model is not None else load_causal_lm(cfg.model.target_path, self.device, cfg.model.target_dtype)
        )
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        check_context_fits(self.lengths, self.max_new_tokens, self.num_draft_tokens, limit)
        self.embedding = self.model.get_input_embeddings().weight.detach().float().cpu()
        self.stop_ids = stop_token_ids(self.model)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.target_path, local_files_only=True)
        docs = document_ids(context_data_path(cfg), tokenizer)
        self.prompts = {
            n: context_prompts(docs, n, e.num_prompts, e.max_new_tokens, tokenizer.bos_token_id) for n in self.lengths
        }
        self.aux_layers = cfg.model.aux_layers

    def measure(self, exported: dict) -> dict:
        """``{"tau@L": ..., "tau_tokens@L": ..., "tau_steps@L": ..., "eval_tau_s": seconds}`` for the
        export in memory ``exported`` (``{"config", "tensors"}``)."""
        from longdraft.train.export import draft_from_export

        started = time.perf_counter()
        draft = draft_from_export(exported["config"], exported["tensors"], self.embedding).to(self.device)
        target = TargetRunner(self.model, self.aux_layers if self.aux_layers is not None else draft.config.aux_layers)
        proposer = Eagle3Proposer(draft)
        by_length = []
        try:
            for n in self.lengths:
                with torch.no_grad():
                    outcomes = run_prompts(
                        target, proposer, self.prompts[n], self.max_new_tokens, self.num_draft_tokens, self.stop_ids
                    )
                by_length.append({"context_length": n, **summarize(outcomes, self.num_draft_tokens)})
        finally:
            target.close()
        return {**tau_metrics(by_length), "eval_tau_s": time.perf_counter() - started}
