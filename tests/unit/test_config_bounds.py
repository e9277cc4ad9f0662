"""Ranges live beside their fields (``config/schema.py`` metadata) and one generic check reads them:
every bounded key refuses the first value past its bound, in the one-line form (origin, key, value,
expected), and the messages users already know keep their words."""

from __future__ import annotations

import dataclasses

import pytest

from longdraft.config import Config, ConfigError, load_config
from longdraft.config.field_checks import bounds_text

BASE = ["data.train_path=t.jsonl", "model.target_path=t", "output.dir=o"]


def _fields(section, prefix=""):
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, type(section)


def _past_the_bound(meta) -> float:
    if meta.get("min") is not None:
        return meta["min"] - 1
    if meta.get("above") is not None:
        return meta["above"]
    return meta["max"] + 1


BOUNDED = [
    (key, f, cls)
    for key, f, cls in _fields(Config())
    if any(f.metadata.get(b) is not None for b in ("min", "above", "max"))
]


def test_the_schema_declares_bounds():
    keys = {key for key, _, _ in BOUNDED}
    assert {"training.lr", "training.log_every", "cluster.run_timeout_s", "store.mooncake.put_timeout_s"} <= keys
    assert len(keys) >= 35


@pytest.mark.parametrize("key,f,cls", BOUNDED, ids=[key for key, _, _ in BOUNDED])
def test_every_bounded_key_refuses_a_value_past_its_bound(key, f, cls):
    import typing

    bad = _past_the_bound(f.metadata)
    tp = typing.get_type_hints(cls)[f.name]
    is_int = int in (typing.get_args(tp) or (tp,))
    bad = int(bad) if is_int else float(bad)
    override = f"{key}={bad}"
    with pytest.raises(ConfigError) as e:
        load_config(None, [*BASE, override])
    expected = f"override '{override}': {key} = {bad!r} is invalid; expected {bounds_text(f.metadata, tp)}"
    assert str(e.value) == expected


@pytest.mark.parametrize(
    "override,expected",
    [
        ("training.lr=-1", "training.lr = -1.0 is invalid; expected a number >= 0 (0 measures a frozen draft)"),
        ("training.log_every=0", "training.log_every = 0 is invalid; expected an integer >= 1"),
        (
            "model.draft_vocab_size=0",
            "model.draft_vocab_size = 0 is invalid; expected an integer >= 1 or null (= target vocab)",
        ),
        ("data.max_rows=0", "data.max_rows = 0 is invalid; expected an integer >= 1 or null (all rows)"),
        ("inference.kv_cache_mb=0", "inference.kv_cache_mb = 0 is invalid; expected an integer >= 1 or null (auto)"),
        ("cluster.cpus_per_actor=0", "cluster.cpus_per_actor = 0.0 is invalid; expected a number > 0 or null"),
        ("cluster.data_timeout_s=0", "cluster.data_timeout_s = 0.0 is invalid; expected a number of seconds > 0"),
        (
            "cluster.run_timeout_s=-1",
            "cluster.run_timeout_s = -1.0 is invalid; expected a number of seconds >= 0 (0: no limit)",
        ),
        (
            "store.mooncake.global_segment_size_mb=8",
            "store.mooncake.global_segment_size_mb = 8 is invalid; expected an integer >= 16 (MiB) or null",
        ),
        ("store.max_inflight_mb=0", "store.max_inflight_mb = 0 is invalid; expected an integer >= 1 (MiB) or null"),
        (
            "inference.gpus_per_producer=0.7",
            "inference.gpus_per_producer = 0.7 is invalid; expected null (auto), 0 (CPU), a fraction below 0.5 "
            "(shares a trainer's GPU) or a whole number >= 1",
        ),
        (
            "model.aux_layers=[1, 1, 2]",
            "model.aux_layers = [1, 1, 2] is invalid; expected 3 distinct layer ids >= 0, or null for [1, N/2-1, N-4]",
        ),
        (
            "eval.context_lengths=[]",
            "eval.context_lengths = [] is invalid; expected a list of token counts >= 2, e.g. [256, 1024, 2048], or null",
        ),
    ],
)
def test_messages_keep_their_words(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [*BASE, override])
    assert str(e.value) == f"override '{override}': {expected}"


def test_a_default_out_of_range_names_it_as_the_default():
    # origins only know what the user set; a value nobody set is named "(default)"
    from longdraft.config.field_checks import check_fields

    cfg = Config()
    cfg.data.train_path, cfg.model.target_path, cfg.output.dir = "t", "t", "o"
    cfg.training.num_steps = 0
    with pytest.raises(ConfigError, match=r"^training.num_steps = 0 \(default\) is invalid; expected an integer >= 1$"):
        check_fields(cfg, {})
