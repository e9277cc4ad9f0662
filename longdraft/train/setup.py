"""Everything a run builds before its first step: data streams, vocab mapping, draft, optimizer, schedule.

The draft is built from the target's `TargetSpec` (its config, embedding and ``lm_head`` read from
the checkpoint), never from an engine, so one device and every trainer rank start identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoTokenizer

from longdraft.config import Config
from longdraft.data.dataset import DataReport, Sample, iter_samples, load_samples
from longdraft.data.stream import SampleStream
from longdraft.data.vocab import VocabMapping, build_vocab_mapping
from longdraft.errors import UserError
from longdraft.model.draft import Eagle3Draft
from longdraft.model.draft_config import draft_config_from_target
from longdraft.model.loss import frozen_dtype, resolve_loss_precision
from longdraft.model.target_head import TargetHead
from longdraft.target.spec import TargetSpec
from longdraft.train.optim import build_optimizer, build_scheduler


def training_stream(cfg: Config, tokenizer, position: int = 0) -> SampleStream:
    """The training samples in their seeded epoch order, from row ``position`` of the stream on."""
    d = cfg.data
    return SampleStream(
        d.train_path,
        tokenizer,
        cfg.training.max_seq_length,
        cfg.training.seed,
        d.on_bad_row,
        d.max_rows,
        d.shuffle_window,
        position,
        d.tokenizer_workers,
    )


def load_held_out(cfg: Config, tokenizer) -> tuple[list[Sample], DataReport | None]:
    """The held-out samples for ``training.eval_every`` (a small file, read whole); samples with too
    few loss tokens are left out."""
    if not cfg.data.eval_path:
        return [], None
    held_out, report = load_samples(
        cfg.data.eval_path, tokenizer, cfg.training.max_seq_length, cfg.data.on_bad_row, cfg.eval.num_prompts * 4
    )
    return [s for s in held_out if s.num_loss_tokens >= cfg.training.min_loss_tokens], report


def load_tokenizer(cfg: Config):
    return AutoTokenizer.from_pretrained(cfg.model.target_path, local_files_only=True)


def vocab_for(cfg: Config, tokenizer) -> VocabMapping:
    """The draft vocab: the most frequent loss tokens of the first ``data.vocab_rows`` training
    samples (streamed, so a large file costs neither memory nor more start-up time)."""
    d = cfg.data
    samples = iter_samples(
        d.train_path,
        tokenizer,
        cfg.training.max_seq_length,
        d.on_bad_row,
        min(d.vocab_rows, d.max_rows or d.vocab_rows),
    )
    return build_vocab_mapping(samples, target_spec(cfg).head_rows(), cfg.model.draft_vocab_size)


def build_draft(
    target: TargetSpec,
    embedding: torch.Tensor,
    vocab: VocabMapping,
    device,
    seed: int,
    aux_layers=None,
    embedding_dtype: torch.dtype = torch.float32,
    sliding_window: int | None = None,
) -> Eagle3Draft:
    """The draft's initial weights depend only on ``seed``, so every rank and layout starts alike.
    The frozen target embedding lives in ``embedding_dtype``."""
    config = draft_config_from_target(target, vocab.draft_vocab_size, aux_layers, sliding_window)
    torch.manual_seed(seed)
    model = Eagle3Draft(config, embedding.to(dtype=embedding_dtype).cpu())
    model.set_vocab_mapping(vocab.d2t, vocab.t2d)
    return model.to(device)


@dataclass
class TrainParts:
    """What the loop updates: the draft, the frozen target head it learns from, optimizer, schedule."""

    model: Eagle3Draft
    target_head: TargetHead
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def target_spec(cfg: Config) -> TargetSpec:
    return TargetSpec.load(cfg.model.target_path)


def check_training_length(cfg: Config) -> None:
    """Refuse a ``training.max_seq_length`` past the target's positions: the target was never run
    that far, and the export (which carries the target's ``max_position_embeddings``, as serving
    engines need) would make vLLM and SGLang clamp the positions the draft was trained on."""
    spec = target_spec(cfg)
    limit = spec.max_position_embeddings
    if limit is not None and cfg.training.max_seq_length > limit:
        raise UserError(
            f"training.max_seq_length = {cfg.training.max_seq_length} is longer than the target's "
            f"max_position_embeddings = {limit} ({spec.source}): lower it to at "
            f"most {limit}, or extend the target's context first"
        )


def build_train_parts(cfg: Config, vocab: VocabMapping, device: torch.device) -> TrainParts:
    t = cfg.training
    spec = target_spec(cfg)
    embedding, head = spec.embedding_and_head()
    # bf16 only where the loss reads them as bf16 (checkpoints store them so: nothing is lost)
    frozen = frozen_dtype(resolve_loss_precision(t.loss_precision, device))
    model = build_draft(spec, embedding, vocab, device, t.seed, cfg.model.aux_layers, frozen, cfg.model.draft_window)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, t.lr, t.weight_decay)
    scheduler = build_scheduler(optimizer, t.warmup_steps, t.num_steps, t.lr, t.min_lr)
    target = TargetHead.cut(head.to(device=device, dtype=frozen), model.draft_to_target, spec.logits)  # once per run
    return TrainParts(model, target, optimizer, scheduler)
