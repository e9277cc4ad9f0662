"""The one check of every value against what its own field declares (``config/schema.py``): required,
bounds (``min``, ``above``, ``max``) and single-field rules. Combinations are ``validation.py``'s."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from longdraft.config.schema import ConfigError


def failure(origins: dict[str, str], key: str, value: Any, expected: str) -> ConfigError:
    """The one-line error: where the value came from, the key, the value and what was expected."""
    origin = origins.get(key)
    head = f"{origin}: {key} = {value!r}" if origin else f"{key} = {value!r} (default)"
    return ConfigError(f"{head} is invalid; expected {expected}")


def check_fields(section: Any, origins: dict[str, str], prefix: str = "") -> None:
    """Raise ``ConfigError`` for the first value of ``section`` (and its subsections) that breaks its
    own field's metadata."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        key, value = f"{prefix}{f.name}", getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, origins, key + ".")
            continue
        meta = f.metadata
        if meta.get("required") and value in (None, ""):
            raise ConfigError(f"{key} is required but was not set (set it in the YAML file or pass '{key}=...')")
        if value is None:
            continue
        if "rule" in meta and not meta["rule"](value):
            raise failure(origins, key, value, meta["expected"])
        if not _within(value, meta):
            raise failure(origins, key, value, bounds_text(meta, hints[f.name]))


def _within(value: Any, meta: typing.Mapping[str, Any]) -> bool:
    low, above, high = meta.get("min"), meta.get("above"), meta.get("max")
    return (low is None or value >= low) and (above is None or value > above) and (high is None or value <= high)


def bounds_text(meta: typing.Mapping[str, Any], tp: Any) -> str:
    """What a bounded field accepts, in words, e.g. "an integer >= 1 or null (auto)"."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    base = next(a for a in args if a is not type(None))
    kind = "an integer" if base is int else f"a number of {meta['unit']}" if meta.get("unit") else "a number"
    limits = [
        f"{op} {meta[name]}"
        for name, op in (("min", ">="), ("above", ">"), ("max", "<="))
        if meta.get(name) is not None
    ]
    text = f"{kind} {' and '.join(limits)}"
    if meta.get("note"):
        text += f" ({meta['note']})"
    if type(None) in args:
        text += " or null" + (f" ({meta['null']})" if meta.get("null") else "")
    return text
