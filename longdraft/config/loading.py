"""Building a ``Config``: a YAML file, then ``section.key=value`` overrides, type-checked and validated.

Every error is a `ConfigError` that names the key, the offending value, where it came from
(`file.yaml:LINE` or `override 'k=v'`) and what was expected.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml

from longdraft.config.schema import Config, ConfigError
from longdraft.config.validation import validate


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (plain YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Map dotted key -> 1-based line of the key in the YAML source."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            lines[dotted] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, dotted + "."))
    return lines


# ---------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


_NO_MATCH = object()


def _coerce(value: Any, tp: Any) -> Any:
    """Return `value` converted to type `tp`, or _NO_MATCH."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in typing.get_args(tp)) else _NO_MATCH
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = _coerce(value, arg)
            if out is not _NO_MATCH:
                return out
        return _NO_MATCH
    if origin is list:
        if not isinstance(value, list):
            return _NO_MATCH
        (item_tp,) = typing.get_args(tp)
        items = [_coerce(v, item_tp) for v in value]
        return _NO_MATCH if any(i is _NO_MATCH for i in items) else items
    if tp is type(None):
        return None if value is None else _NO_MATCH
    if tp is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if tp is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NO_MATCH
    if tp is str:
        return value if isinstance(value, str) else _NO_MATCH
    raise TypeError(f"unsupported config type {tp!r}")


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


# ---------------------------------------------------------------- building a Config

RENAMED_KEYS = {"training.ring_layout": "training.shard_order"}  # old -> new; the old key is read until 0.2


class _Builder:
    def __init__(self) -> None:
        self.cfg = Config()
        self.origins: dict[str, str] = {}  # dotted key -> "file:line" / "override '...'"
        # Values are type-checked only after the YAML file and all overrides are merged, so an
        # override can replace a bad file value; unknown keys fail at once.
        self.pending: dict[str, tuple[Any, dataclasses.Field, Any, Any, str, Path | None]] = {}

    def set(self, dotted: str, value: Any, origin: str, base_dir: Path | None) -> None:
        if dotted in RENAMED_KEYS:
            warnings.warn(
                f"{origin}: '{dotted}' is now '{RENAMED_KEYS[dotted]}' (the old name goes in 0.2)",
                FutureWarning,
                stacklevel=2,
            )
            dotted = RENAMED_KEYS[dotted]
        parts = dotted.split(".")
        obj: Any = self.cfg
        for i, name in enumerate(parts):
            prefix = ".".join(parts[:i])
            fields_ = _fields(type(obj))
            if name not in fields_:
                scope = f"section '{prefix}'" if prefix else "the top level"
                raise ConfigError(
                    f"{origin}: unknown key '{'.'.join(parts[: i + 1])}' in {scope}; valid keys: {', '.join(fields_)}"
                )
            f, tp = fields_[name]
            key = ".".join(parts[: i + 1])
            if dataclasses.is_dataclass(tp):
                if i == len(parts) - 1:
                    if not isinstance(value, dict):
                        raise ConfigError(f"{origin}: '{key}' is a section and needs a mapping, got {value!r}")
                    for sub, sub_value in value.items():
                        self.set(f"{key}.{sub}", sub_value, origin, base_dir)
                    return
                obj = getattr(obj, name)
                continue
            if i != len(parts) - 1:
                raise ConfigError(f"{origin}: '{key}' is a value, not a section (in '{dotted}')")
            self.pending[key] = (obj, f, tp, value, origin, base_dir)

    def apply(self) -> None:
        for key, (obj, f, tp, value, origin, base_dir) in self.pending.items():
            self._set_leaf(obj, f, tp, key, value, origin, base_dir)
        self.pending.clear()

    def set_tree(self, tree: dict, lines: dict[str, int], source: str, base_dir: Path, prefix: str = "") -> None:
        for name, value in tree.items():
            key = f"{prefix}{name}"
            origin = f"{source}:{lines.get(key, '?')}"
            if value is None and self._is_section(key):
                continue  # an empty section keeps its defaults
            if isinstance(value, dict) and self._is_section(key):
                self.set(key, {}, origin, base_dir)  # validates the section name
                self.set_tree(value, lines, source, base_dir, key + ".")
            else:
                self.set(key, value, origin, base_dir)

    def _is_section(self, dotted: str) -> bool:
        obj: Any = self.cfg
        for name in dotted.split("."):
            fields_ = _fields(type(obj))
            if name not in fields_ or not dataclasses.is_dataclass(fields_[name][1]):
                return False
            obj = getattr(obj, name)
        return True

    def _set_leaf(
        self, obj: Any, f: dataclasses.Field, tp: Any, key: str, value: Any, origin: str, base_dir: Path | None
    ) -> None:
        if f.metadata.get("required"):
            tp = tp | None  # None means "not given"; checked in validate()
        out = _coerce(value, tp)
        if out is _NO_MATCH:
            raise ConfigError(f"{origin}: {key} = {value!r} is invalid; expected {_type_name(tp)}")
        hub_name = f.metadata.get("data") and isinstance(out, str) and out.startswith("hf:")
        if f.metadata.get("path") and isinstance(out, str) and base_dir is not None and not hub_name:
            p = Path(out).expanduser()
            out = str(p if p.is_absolute() else (base_dir / p).resolve())
        setattr(obj, f.name, out)
        self.origins[key] = origin


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected the form section.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}': empty key; expected the form section.key=value")
    return key, _parse_scalar(text)


def config_from_dict(
    tree: dict[str, Any], *, base_dir: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Build and validate a Config from a nested dict (paths resolve against `base_dir` or CWD)."""
    b = _Builder()
    b.set_tree(tree, {}, "<dict>", Path(base_dir or Path.cwd()).resolve())
    for item in overrides:
        key, value = _split_override(item)
        b.set(key, value, f"override '{item}'", Path.cwd())
    b.apply()
    validate(b.cfg, b.origins)
    return b.cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (if `path`), apply `section.key=value` overrides, validate."""
    b = _Builder()
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        try:
            tree = yaml.load(text, Loader=_Loader)
            lines = _key_lines(yaml.compose(text, Loader=_Loader))
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(tree).__name__}")
        b.set_tree(tree, lines, str(path), path.resolve().parent)
    for item in overrides:
        key, value = _split_override(item)
        b.set(key, value, f"override '{item}'", Path.cwd())  # CLI paths are relative to the CWD
    b.apply()
    validate(b.cfg, b.origins)
    return b.cfg


def save_config(cfg: Config, path: str | Path | None = None) -> Path:
    """Write the resolved config as YAML (default `<output.dir>/config.yaml`) and return the path."""
    out = Path(path) if path is not None else Path(cfg.output.dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    return out
