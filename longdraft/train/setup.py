"""Everything a run builds before its first step: data, target engine, vocab mapping, draft."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from transformers import AutoTokenizer

from longdraft.config import Config
from longdraft.data.dataset import DataReport, Sample, load_samples
from longdraft.data.vocab import VocabMapping, build_vocab_mapping
from longdraft.model.draft import Eagle3Draft
from longdraft.model.draft_config import draft_config_from_target
from longdraft.target.hf_engine import HFTargetEngine, resolve_device


@dataclass
class LoadedData:
    train: list[Sample]
    eval: list[Sample]
    reports: list[DataReport]
    skipped: Counter = field(default_factory=Counter)  # reason -> samples not trained


def load_data(cfg: Config, tokenizer) -> LoadedData:
    """Tokenise the data sets. Samples with too few loss tokens stay in the order; the trainer skips them."""
    train, train_report = load_samples(
        cfg.data.train_path, tokenizer, cfg.training.max_seq_length, cfg.data.on_bad_row, cfg.data.max_rows
    )
    reports, skipped = [train_report], Counter({f"bad_row:{k}": v for k, v in train_report.skipped.items()})
    held_out: list[Sample] = []
    if cfg.data.eval_path:
        held_out, eval_report = load_samples(
            cfg.data.eval_path, tokenizer, cfg.training.max_seq_length, cfg.data.on_bad_row, cfg.eval.num_prompts * 4
        )
        reports.append(eval_report)
        held_out = [s for s in held_out if s.num_loss_tokens >= cfg.training.min_loss_tokens]
    return LoadedData(train, held_out, reports, skipped)


def load_tokenizer(cfg: Config):
    return AutoTokenizer.from_pretrained(cfg.model.target_path, local_files_only=True)


def load_engine(cfg: Config) -> HFTargetEngine:
    return HFTargetEngine(
        cfg.model.target_path, cfg.model.aux_layers, resolve_device(cfg.training.device), cfg.model.target_dtype
    )


def build_draft(target_config, embedding: torch.Tensor, vocab: VocabMapping, device, seed: int) -> Eagle3Draft:
    """The draft's initial weights depend only on ``seed``, so every rank and layout starts alike."""
    config = draft_config_from_target(target_config, vocab.draft_vocab_size)
    torch.manual_seed(seed)
    model = Eagle3Draft(config, embedding.float().cpu())
    model.set_vocab_mapping(vocab.d2t, vocab.t2d)
    return model.to(device)


def vocab_for(cfg: Config, samples: list[Sample], engine: HFTargetEngine) -> VocabMapping:
    return build_vocab_mapping(samples, engine.vocab_size, cfg.model.draft_vocab_size)
