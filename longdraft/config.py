"""Typed run configuration: YAML file + `section.key=value` overrides, validated with clear errors.

Every error is a `ConfigError` that names the key, the offending value, where it came from
(`file.yaml:LINE` or `override 'k=v'`) and what was expected.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """Invalid configuration: message names the key, the value and what was expected."""


def _path(default: Any = None, *, required: bool = False) -> Any:
    return field(default=default, metadata={"path": True, "required": required})


@dataclass
class DataConfig:
    train_path: str = _path(required=True)
    eval_path: str | None = _path()
    on_bad_row: Literal["error", "skip"] = "error"
    max_rows: int | None = None


@dataclass
class ModelConfig:
    target_path: str = _path(required=True)
    draft_vocab_size: int | None = None  # None: the target vocab (identity mapping)
    aux_layers: list[int] | None = None  # None: [1, N/2-1, N-4]
    target_dtype: Literal["auto", "fp32", "bf16"] = "auto"


@dataclass
class TrainingConfig:
    max_seq_length: int = 2048
    ttt_length: int = 7
    batch_size: int = 8  # global batch of one optimizer step
    micro_batch_size: int = 1  # accumulation = batch_size / (micro_batch_size * dp)
    num_steps: int = 100
    lr: float = 1e-4
    warmup_steps: int = 0
    min_lr: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 0.5  # 0 disables clipping
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    resume: bool = False
    eval_every: int = 0
    log_every: int = 1
    attention_backend: Literal["fast", "reference", "usp"] = "fast"
    num_trainers: int = 1
    sp_ulysses_size: int = 1
    sp_ring_size: int = 1
    ring_layout: Literal["contiguous", "zigzag"] = "contiguous"
    loss_chunk_size: int = 1024
    activation_checkpointing: bool = False
    min_loss_tokens: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = False


@dataclass
class InferenceConfig:
    num_producers: int = 1
    batch_size: int = 4


@dataclass
class MooncakeConfig:
    master_address: str | None = None  # None: start a local master
    metadata_server: str = "P2PHANDSHAKE"
    protocol: Literal["tcp", "rdma"] = "tcp"
    global_segment_size_mb: int = 256
    local_buffer_size_mb: int = 128
    device_name: str = ""


@dataclass
class StoreConfig:
    backend: Literal["ray", "mooncake"] = "ray"
    mooncake: MooncakeConfig = field(default_factory=MooncakeConfig)


@dataclass
class EvalConfig:
    max_new_tokens: int = 64
    num_prompts: int = 16
    enabled: bool = False


@dataclass
class OutputConfig:
    dir: str = _path(required=True)
    plot: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def sp_size(self) -> int:
        return self.training.sp_ulysses_size * self.training.sp_ring_size

    @property
    def dp_size(self) -> int:
        return self.training.num_trainers // self.sp_size

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches each DP replica runs per optimizer step."""
        return self.training.batch_size // (self.training.micro_batch_size * self.dp_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- YAML loading helpers


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


class _Builder:
    def __init__(self) -> None:
        self.cfg = Config()
        self.origins: dict[str, str] = {}  # dotted key -> "file:line" / "override '...'"
        # Values are type-checked only after the YAML file and all overrides are merged, so an
        # override can replace a bad file value; unknown keys fail at once.
        self.pending: dict[str, tuple[Any, dataclasses.Field, Any, Any, str, Path | None]] = {}

    def set(self, dotted: str, value: Any, origin: str, base_dir: Path | None) -> None:
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

    def _set_leaf(self, obj: Any, f: dataclasses.Field, tp: Any, key: str, value: Any, origin: str,
                  base_dir: Path | None) -> None:
        if f.metadata.get("required"):
            tp = tp | None  # None means "not given"; checked in validate()
        out = _coerce(value, tp)
        if out is _NO_MATCH:
            raise ConfigError(f"{origin}: {key} = {value!r} is invalid; expected {_type_name(tp)}")
        if f.metadata.get("path") and isinstance(out, str) and base_dir is not None:
            p = Path(out).expanduser()
            out = str(p if p.is_absolute() else (base_dir / p).resolve())
        setattr(obj, f.name, out)
        self.origins[key] = origin


def _validate(b: _Builder) -> None:
    cfg = b.cfg

    def fail(key: str, value: Any, expected: str) -> None:
        origin = b.origins.get(key)
        head = f"{origin}: {key} = {value!r}" if origin else f"{key} = {value!r} (default)"
        raise ConfigError(f"{head} is invalid; expected {expected}")

    for section_name in ("data", "model", "training", "inference", "store", "eval", "output"):
        section = getattr(cfg, section_name)
        for name, (f, _) in _fields(type(section)).items():
            if f.metadata.get("required") and getattr(section, name) in (None, ""):
                raise ConfigError(f"{section_name}.{name} is required but was not set (set it in the YAML "
                                  f"file or pass '{section_name}.{name}=...')")

    t = cfg.training
    for key, minimum in [
        ("max_seq_length", 1), ("ttt_length", 1), ("batch_size", 1), ("micro_batch_size", 1),
        ("num_steps", 1), ("warmup_steps", 0), ("save_every", 0), ("eval_every", 0), ("log_every", 1),
        ("num_trainers", 1), ("sp_ulysses_size", 1), ("sp_ring_size", 1), ("loss_chunk_size", 1),
        ("min_loss_tokens", 0),
    ]:
        if getattr(t, key) < minimum:
            fail(f"training.{key}", getattr(t, key), f"an integer >= {minimum}")
    if not t.lr > 0:
        fail("training.lr", t.lr, "a number > 0")
    for key in ("min_lr", "weight_decay", "max_grad_norm"):
        if getattr(t, key) < 0:
            fail(f"training.{key}", getattr(t, key), "a number >= 0")
    if t.min_lr > t.lr:
        fail("training.min_lr", t.min_lr, f"a number <= training.lr ({t.lr})")

    sp = cfg.sp_size
    if t.num_trainers % sp:
        fail("training.num_trainers", t.num_trainers,
             f"a multiple of sp_ulysses_size*sp_ring_size = {t.sp_ulysses_size}*{t.sp_ring_size} = {sp}")
    if sp > 1 and t.attention_backend != "usp":
        fail("training.attention_backend", t.attention_backend,
             f"'usp' because sequence parallelism is on (sp_ulysses_size*sp_ring_size = {sp})")
    per_step = t.micro_batch_size * cfg.dp_size
    if t.batch_size % per_step:
        fail("training.batch_size", t.batch_size,
             f"a multiple of micro_batch_size*dp = {t.micro_batch_size}*{cfg.dp_size} = {per_step} "
             f"(dp = num_trainers / sp = {t.num_trainers}/{sp})")

    m = cfg.model
    if m.draft_vocab_size is not None and m.draft_vocab_size < 1:
        fail("model.draft_vocab_size", m.draft_vocab_size, "an integer >= 1 or null (= target vocab)")
    if m.aux_layers is not None and (len(m.aux_layers) != 3 or len(set(m.aux_layers)) != 3
                                     or min(m.aux_layers) < 0):
        fail("model.aux_layers", m.aux_layers, "3 distinct layer ids >= 0, or null for [1, N/2-1, N-4]")

    if cfg.data.max_rows is not None and cfg.data.max_rows < 1:
        fail("data.max_rows", cfg.data.max_rows, "an integer >= 1 or null (all rows)")
    for key in ("num_producers", "batch_size"):
        if getattr(cfg.inference, key) < 1:
            fail(f"inference.{key}", getattr(cfg.inference, key), "an integer >= 1")
    mc = cfg.store.mooncake
    if mc.global_segment_size_mb < 16:  # Mooncake refuses smaller segments
        fail("store.mooncake.global_segment_size_mb", mc.global_segment_size_mb, "an integer >= 16 (MiB)")
    if mc.local_buffer_size_mb < 1:
        fail("store.mooncake.local_buffer_size_mb", mc.local_buffer_size_mb, "an integer >= 1")
    if t.num_trainers > 1 and t.micro_batch_size != 1:
        fail("training.micro_batch_size", t.micro_batch_size,
             "1 when training.num_trainers > 1 (each sequence has its own shard layout)")
    for key in ("max_new_tokens", "num_prompts"):
        if getattr(cfg.eval, key) < 1:
            fail(f"eval.{key}", getattr(cfg.eval, key), "an integer >= 1")


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected the form section.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}': empty key; expected the form section.key=value")
    return key, _parse_scalar(text)


def config_from_dict(tree: dict[str, Any], *, base_dir: str | Path | None = None,
                     overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build and validate a Config from a nested dict (paths resolve against `base_dir` or CWD)."""
    b = _Builder()
    b.set_tree(tree, {}, "<dict>", Path(base_dir or Path.cwd()).resolve())
    for item in overrides:
        key, value = _split_override(item)
        b.set(key, value, f"override '{item}'", Path.cwd())
    b.apply()
    _validate(b)
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
    _validate(b)
    return b.cfg


def save_config(cfg: Config, path: str | Path | None = None) -> Path:
    """Write the resolved config as YAML (default `<output.dir>/config.yaml`) and return the path."""
    out = Path(path) if path is not None else Path(cfg.output.dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    return out
