"""`TargetSpec`: the target model as longdraft uses it, read once from its directory.

Everything that needs the target's shapes, RoPE, dtype, final norm, logit transform, aux layers or
its embedding/head/final-norm weights takes a `TargetSpec` (ARCHITECTURE.md, "One reader of the
target"): nothing else opens ``config.json``. Family quirks are decided here, by name, once; a quirk
this module does not know is refused at start-up (`UserError` naming the key and value), never
computed wrong. Low in the import graph: transformers' config classes, no model/, engines/, train/.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from longdraft.errors import UserError
from longdraft.target import weights
from longdraft.target.aux_layers import resolve_aux_layers, vllm_layer_ids
from longdraft.target.logits import LogitTransform

NormKind = Literal["weight", "one_plus_weight"]

# The final norm of each family whose modeling code was read: ``w·x̂`` (Llama's RMSNorm) or
# ``(1 + w)·x̂`` (Gemma's, weights stored around 0). A family not listed is refused: its norm could be
# a LayerNorm, a bias, another offset, and the vLLM capture (engines/final_norm.py) would be wrong.
_NORM_KINDS: dict[str, NormKind] = {
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "phi3",
            "gpt_oss",
            "olmo2",
            "granite",
            "granitemoe",
            "deepseek_v3",
            "smollm3",
        ),
        "weight",
    ),
    **dict.fromkeys(("gemma", "gemma2", "gemma3", "gemma3_text"), "one_plus_weight"),
}

# Config keys of logit transforms longdraft does not apply; set to a non-trivial value they are refused
# (the target distribution would differ from the target's own softmax).
_UNHANDLED_LOGIT_KEYS = {
    "logit_scale": "Cohere multiplies its logits by it",
    "lm_head_multiplier": "Falcon-H1 multiplies its logits by it",
    "output_multiplier_scale": "Grok multiplies its logits by it",
    "scale_width": "MiniCPM divides the final hidden state by hidden/dim_model_base",
}


@dataclass(frozen=True)
class Rope:
    """``theta`` and the non-default scaling's parameters (``rope_type`` included; None for default)."""

    theta: float
    scaling: dict | None


@dataclass(frozen=True)
class TargetSpec:
    source: str  # where it was read (messages name it)
    path: Path | None  # the target directory; None for a spec built from a config object alone
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    dtype: str  # the checkpoint's dtype as transformers names it ("bfloat16"); float32 when unset
    rope: Rope
    max_position_embeddings: int | None
    rms_norm_eps: float | None
    hidden_act: str
    norm_kind: NormKind
    logits: LogitTransform

    @classmethod
    def load(cls, path: str | Path) -> TargetSpec:
        """The spec of a local Hugging Face model directory (never a download)."""
        from huggingface_hub.errors import StrictDataclassError
        from transformers import AutoConfig

        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(
                f"target model directory {path} has no config.json (only local checkpoints are loaded, never downloads)"
            )
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except (ValueError, KeyError, TypeError, StrictDataclassError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path / 'config.json'}: transformers cannot read it: {first}") from None
        return cls.from_config(config, str(path / "config.json"), path)

    @classmethod
    def from_config(cls, config, source: str = "the target config", path: Path | None = None) -> TargetSpec:
        """The spec of a transformers config (the text part of a multimodal one)."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        model_type = str(getattr(text, "model_type", "") or getattr(config, "model_type", ""))
        hidden, heads = int(text.hidden_size), int(text.num_attention_heads)
        return cls(
            source=source,
            path=path,
            model_type=model_type,
            num_layers=int(text.num_hidden_layers),
            hidden_size=hidden,
            intermediate_size=int(text.intermediate_size),
            num_heads=heads,
            num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=_head_dim(text, source),
            vocab_size=int(text.vocab_size),
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", getattr(text, "tie_word_embeddings", False))),
            dtype=_dtype_name(config, text),
            rope=rope_settings(text, source),
            max_position_embeddings=_int_or_none(getattr(text, "max_position_embeddings", None)),
            rms_norm_eps=_float_or_none(getattr(text, "rms_norm_eps", None)),
            hidden_act=str(getattr(text, "hidden_act", None) or "silu"),
            norm_kind=_norm_kind(model_type, source),
            logits=_logit_transform(config, text, source),
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def aux_layers(self, requested: Sequence[int] | None = None) -> list[int]:
        """Our aux layer ids (outputs of layers), ascending; None: the EAGLE-3 default."""
        return resolve_aux_layers(requested, self.num_layers)

    def vllm_aux_layer_ids(self, requested: Sequence[int] | None = None) -> list[int]:
        """The same layers in vLLM's numbering (inputs of layers)."""
        return vllm_layer_ids(self.aux_layers(requested))

    def head_rows(self) -> int:
        """Rows of the ``lm_head`` (the id space of ``d2t``/``t2d``), from the safetensors header."""
        return weights.head_rows(self._dir())

    def embedding_and_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding ``[V, H]``, lm_head ``[V, H]``) in fp32; a tied target reuses the embedding."""
        return weights.load_embedding_and_head(self._dir(), self.tied_embeddings)

    def final_norm_weight(self) -> torch.Tensor:
        """The final norm's weight ``[H]``, to be applied as ``norm_kind`` with ``final_norm_eps``."""
        return weights.load_final_norm(self._dir())

    @property
    def final_norm_eps(self) -> float:
        if self.rms_norm_eps is None:
            raise UserError(f"{self.source}: no rms_norm_eps; expected the target's final RMSNorm epsilon")
        return self.rms_norm_eps

    def _dir(self) -> Path:
        if self.path is None:
            raise ValueError(f"the spec of {self.source} has no directory to read weights from")
        return self.path


def _int_or_none(v) -> int | None:
    return None if v is None else int(v)


def _float_or_none(v) -> float | None:
    return None if v is None else float(v)


def _head_dim(text, source: str) -> int:
    hidden, heads = int(text.hidden_size), int(text.num_attention_heads)
    if getattr(text, "kv_lora_rank", None) or getattr(text, "qk_rope_head_dim", None):
        # MLA (DeepSeek-V2/V3): the config's ``head_dim`` is the RoPE part of its query/key heads (64
        # in V3), and its value heads are another width (``v_head_dim``); neither is the head of a
        # plain GQA layer. The draft is such a layer over the target's hidden size, so it takes
        # hidden / heads (7168 / 128 = 56 for V3), chosen here on purpose.
        if hidden % heads:
            raise UserError(f"{source}: hidden_size = {hidden} is not a multiple of num_attention_heads = {heads}")
        return hidden // heads
    return int(getattr(text, "head_dim", None) or hidden // heads)


def _dtype_name(config, text) -> str:
    for c in (config, text):
        d = getattr(c, "dtype", None) or getattr(c, "__dict__", {}).get("torch_dtype")
        if d is not None:
            return str(d).removeprefix("torch.")
    return "float32"


def rope_settings(text, source: str) -> Rope:
    """Theta and scaling across transformers' config styles. Per-layer-type parameters (Gemma-3:
    sliding layers 10k, full-attention layers 1M) give those of the full-attention layers: the draft
    attends over the whole context, as they do."""
    params = getattr(text, "rope_parameters", None) or {}
    if params and all(isinstance(v, dict) for v in params.values()):
        if "full_attention" not in params:
            raise UserError(
                f"{source}: rope_parameters per layer type {sorted(params)} have no 'full_attention' entry; "
                "expected the RoPE of the full-attention layers for the draft"
            )
        params = params["full_attention"]
    theta = params.get("rope_theta", getattr(text, "rope_theta", None) or 10000.0)
    scaling = {k: v for k, v in params.items() if k != "rope_theta"} or getattr(text, "rope_scaling", None)
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return Rope(float(theta), copy.deepcopy(scaling) or None)


def _norm_kind(model_type: str, source: str) -> NormKind:
    kind = _NORM_KINDS.get(model_type)
    if kind is None:
        raise UserError(
            f"{source}: model_type = {model_type!r}, a family whose final norm longdraft does not know; "
            f"expected one of {', '.join(sorted(_NORM_KINDS))}"
        )
    return kind


def _logit_transform(config, text, source: str) -> LogitTransform:
    for key, what in _UNHANDLED_LOGIT_KEYS.items():
        value = getattr(text, key, getattr(config, key, None))
        if not (value is None or value is False or (not isinstance(value, bool) and value == 1)):
            raise UserError(f"{source}: {key} = {value!r} ({what}), a logit transform longdraft does not apply")
    softcap = getattr(text, "final_logit_softcapping", None)
    scale = getattr(text, "logits_scaling", None)
    for key, value in (("final_logit_softcapping", softcap), ("logits_scaling", scale)):
        if value is not None and not float(value) > 0:
            raise UserError(f"{source}: {key} = {value!r}; expected a positive number (or null)")
    return LogitTransform(None if softcap is None else float(softcap), 1.0 if scale is None else float(scale))
