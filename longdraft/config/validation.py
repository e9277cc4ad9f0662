"""Checks across values of a ``Config`` (combinations), run before anything starts. A value's own
range is declared beside its field (``config/schema.py``) and checked by ``config/field_checks.py``."""

from __future__ import annotations

from typing import Any

from longdraft.attention.choice import choose_attention_backend
from longdraft.config.field_checks import check_fields, failure
from longdraft.config.schema import Config


def validate(cfg: Config, origins: dict[str, str]) -> None:
    """Raise ``ConfigError`` for the first value that is out of range or does not fit the others."""

    def fail(key: str, value: Any, expected: str) -> None:
        raise failure(origins, key, value, expected)

    check_fields(cfg, origins)
    t = cfg.training
    if t.min_lr > t.lr:
        fail("training.min_lr", t.min_lr, f"a number <= training.lr ({t.lr})")

    sp = cfg.sp_size
    if t.num_trainers % sp:
        fail(
            "training.num_trainers",
            t.num_trainers,
            f"a multiple of sp_ulysses_size*sp_ring_size = {t.sp_ulysses_size}*{t.sp_ring_size} = {sp}",
        )
    try:
        choose_attention_backend(t.attention_backend, sp)
    except ValueError as exc:
        fail("training.attention_backend", t.attention_backend, str(exc))
    per_step = t.micro_batch_size * cfg.dp_size
    if t.batch_size % per_step:
        fail(
            "training.batch_size",
            t.batch_size,
            f"a multiple of micro_batch_size*dp = {t.micro_batch_size}*{cfg.dp_size} = {per_step} "
            f"(dp = num_trainers / sp = {t.num_trainers}/{sp})",
        )
    if cfg.eval.every and not cfg.eval.context_lengths:
        fail("eval.every", cfg.eval.every, "0, or eval.context_lengths set (the lengths to measure τ at)")
    if t.num_trainers > 1 and t.micro_batch_size != 1:
        fail(
            "training.micro_batch_size",
            t.micro_batch_size,
            "1 when training.num_trainers > 1 (each sequence has its own shard layout)",
        )
    if t.tokens_per_micro_batch is not None:
        if t.micro_batch_size != 1:
            fail(
                "training.micro_batch_size",
                t.micro_batch_size,
                "1 when training.tokens_per_micro_batch is set (the token budget sizes the micro-batches)",
            )
        if t.tokens_per_micro_batch < sp:
            fail(
                "training.tokens_per_micro_batch",
                t.tokens_per_micro_batch,
                f"a number >= sp_ulysses_size*sp_ring_size = {sp} (a full micro-batch gives every SP rank a token)",
            )
