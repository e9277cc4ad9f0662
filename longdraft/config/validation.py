"""Checks across values of a ``Config`` (ranges and combinations), run before anything starts."""

from __future__ import annotations

import dataclasses
from typing import Any

from longdraft.attention.choice import choose_attention_backend
from longdraft.config.schema import Config, ConfigError


def validate(cfg: Config, origins: dict[str, str]) -> None:
    """Raise ``ConfigError`` for the first value that is out of range or does not fit the others."""

    def fail(key: str, value: Any, expected: str) -> None:
        origin = origins.get(key)
        head = f"{origin}: {key} = {value!r}" if origin else f"{key} = {value!r} (default)"
        raise ConfigError(f"{head} is invalid; expected {expected}")

    for section_name in ("data", "model", "training", "inference", "store", "eval", "output", "cluster"):
        section = getattr(cfg, section_name)
        for f in dataclasses.fields(section):
            name = f.name
            if f.metadata.get("required") and getattr(section, name) in (None, ""):
                raise ConfigError(
                    f"{section_name}.{name} is required but was not set (set it in the YAML "
                    f"file or pass '{section_name}.{name}=...')"
                )

    t = cfg.training
    for key, minimum in [
        ("max_seq_length", 1),
        ("ttt_length", 1),
        ("batch_size", 1),
        ("micro_batch_size", 1),
        ("num_steps", 1),
        ("warmup_steps", 0),
        ("save_every", 0),
        ("eval_every", 0),
        ("log_every", 1),
        ("num_trainers", 1),
        ("sp_ulysses_size", 1),
        ("sp_ring_size", 1),
        ("loss_chunk_size", 1),
        ("min_loss_tokens", 0),
    ]:
        if getattr(t, key) < minimum:
            fail(f"training.{key}", getattr(t, key), f"an integer >= {minimum}")
    if t.lr < 0:
        fail("training.lr", t.lr, "a number >= 0 (0 measures a frozen draft)")
    for key in ("min_lr", "weight_decay", "max_grad_norm", "grad_bucket_mb"):
        if getattr(t, key) < 0:
            fail(f"training.{key}", getattr(t, key), "a number >= 0")
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

    m = cfg.model
    if m.draft_vocab_size is not None and m.draft_vocab_size < 1:
        fail("model.draft_vocab_size", m.draft_vocab_size, "an integer >= 1 or null (= target vocab)")
    if m.aux_layers is not None and (len(m.aux_layers) != 3 or len(set(m.aux_layers)) != 3 or min(m.aux_layers) < 0):
        fail("model.aux_layers", m.aux_layers, "3 distinct layer ids >= 0, or null for [1, N/2-1, N-4]")

    if cfg.data.max_rows is not None and cfg.data.max_rows < 1:
        fail("data.max_rows", cfg.data.max_rows, "an integer >= 1 or null (all rows)")
    for key in ("shuffle_window", "vocab_rows"):
        if getattr(cfg.data, key) < 1:
            fail(f"data.{key}", getattr(cfg.data, key), "an integer >= 1")
    for key in ("num_producers", "batch_size"):
        if getattr(cfg.inference, key) < 1:
            fail(f"inference.{key}", getattr(cfg.inference, key), "an integer >= 1")
    lengths = cfg.eval.context_lengths
    if lengths is not None and (not lengths or any(not isinstance(n, int) or n < 2 for n in lengths)):
        fail("eval.context_lengths", lengths, "a list of token counts >= 2, e.g. [256, 1024, 2048], or null")
    for key in ("max_num_batched_tokens", "kv_cache_mb"):
        if getattr(cfg.inference, key) is not None and getattr(cfg.inference, key) < 1:
            fail(f"inference.{key}", getattr(cfg.inference, key), "an integer >= 1 or null (auto)")
    f = cfg.inference.gpus_per_producer
    if f is not None and not (f == 0 or 0 < f < 0.5 or (f >= 1 and f == int(f))):
        fail(
            "inference.gpus_per_producer",
            f,
            "null (auto), 0 (CPU), a fraction below 0.5 (shares a trainer's GPU) or a whole number >= 1",
        )
    c = cfg.cluster
    if c.cpus_per_actor is not None and c.cpus_per_actor <= 0:
        fail("cluster.cpus_per_actor", c.cpus_per_actor, "a number > 0 or null")
    for key in ("collective_timeout_s", "data_timeout_s", "stall_timeout_s", "placement_timeout_s"):
        if getattr(c, key) <= 0:
            fail(f"cluster.{key}", getattr(c, key), "a number of seconds > 0")
    if c.run_timeout_s < 0:
        fail("cluster.run_timeout_s", c.run_timeout_s, "a number of seconds >= 0 (0: no limit)")
    mc = cfg.store.mooncake
    if mc.global_segment_size_mb is not None and mc.global_segment_size_mb < 16:  # Mooncake refuses smaller
        fail("store.mooncake.global_segment_size_mb", mc.global_segment_size_mb, "an integer >= 16 (MiB) or null")
    if mc.local_buffer_size_mb is not None and mc.local_buffer_size_mb < 1:
        fail("store.mooncake.local_buffer_size_mb", mc.local_buffer_size_mb, "an integer >= 1 or null")
    if mc.put_timeout_s <= 0:
        fail("store.mooncake.put_timeout_s", mc.put_timeout_s, "a number of seconds > 0")
    if cfg.store.max_inflight_mb is not None and cfg.store.max_inflight_mb < 1:
        fail("store.max_inflight_mb", cfg.store.max_inflight_mb, "an integer >= 1 (MiB) or null")
    if t.num_trainers > 1 and t.micro_batch_size != 1:
        fail(
            "training.micro_batch_size",
            t.micro_batch_size,
            "1 when training.num_trainers > 1 (each sequence has its own shard layout)",
        )
    for key in ("max_new_tokens", "num_prompts"):
        if getattr(cfg.eval, key) < 1:
            fail(f"eval.{key}", getattr(cfg.eval, key), "an integer >= 1")
