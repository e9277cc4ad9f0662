"""Export to the EAGLE-3 serving layout (SGLang / vLLM) and load it back.

``config.json``: a one-layer Llama with ``architectures: ["LlamaForCausalLMEagle3"]``, the target
vocab as ``vocab_size``, ``draft_vocab_size``, explicit ``rope_theta``/``rope_scaling``; weights in the
target's dtype (serving engines load drafts in it: bf16 for a bf16 target), named as ``torch_dtype``
and ``dtype`` (transformers 4 and 5 read one each); ``target_dtype`` keeps it for `export_checkpoint`.
``model.safetensors``: ``fc.weight``, ``midlayer.*``, ``norm.weight``, ``lm_head.weight``, ``d2t``,
``t2d``; no ``model.`` prefix and no embedding (engines take the target's).

The target layers the draft was trained on are written twice, once per numbering: vLLM reads the
top-level ``eagle_aux_hidden_state_layer_ids`` as *inputs* of layers (our output of layer ``i`` is
its id ``i + 1``); SGLang reads ``eagle_config.eagle_aux_hidden_state_layer_ids`` as outputs of
layers (our ids as they are). Without them a serving engine falls back to its own default, which
for small targets or non-default training layers are other tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig

from longdraft.errors import UserError
from longdraft.model.draft import Eagle3Draft
from longdraft.model.draft_config import rope_theta_and_scaling

WEIGHT_PREFIXES = ("fc.", "midlayer.", "norm.", "lm_head.")


class ExportError(UserError, ValueError):
    """An export that cannot be written or read as asked: the message names the file and the field."""


def export_config_dict(config: LlamaConfig, dtype: torch.dtype) -> dict:
    rope_theta, rope_scaling = rope_theta_and_scaling(config)
    out = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": config.hidden_act,
        "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "vocab_size": config.vocab_size,
        "draft_vocab_size": config.draft_vocab_size,
        "target_hidden_size": config.target_hidden_size,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "dtype": str(dtype).removeprefix("torch."),
        "target_dtype": getattr(config, "target_dtype", "float32"),
    }
    aux = getattr(config, "aux_layers", None)
    if aux is not None:  # None only for a checkpoint from before the layers were recorded
        out["eagle_aux_hidden_state_layer_ids"] = [i + 1 for i in aux]
        out["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(aux), "use_aux_hidden_state": True}
    return out


def export_draft(
    model: Eagle3Draft, out_dir: str | Path, dtype: torch.dtype | None = None, trained_length: int | None = None
) -> Path:
    """Write the export, in ``dtype`` (default: the target's, ``config.target_dtype``); refuses one whose
    ``max_position_embeddings`` is below ``trained_length`` (vLLM and SGLang would clamp the positions
    the draft was trained on)."""
    if dtype is None:
        dtype = getattr(torch, getattr(model.config, "target_dtype", "float32"))
    limit = model.config.max_position_embeddings
    if trained_length is not None and limit < trained_length:
        raise ExportError(
            f"the draft was trained on sequences of {trained_length} tokens but its config says "
            f"max_position_embeddings = {limit}: a serving engine would clamp positions past {limit}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: param.detach().to("cpu", dtype).contiguous()
        for name, param in model.state_dict().items()
        if name.startswith(WEIGHT_PREFIXES)
    }
    tensors["d2t"] = model.d2t.detach().cpu().to(torch.int64).contiguous()
    tensors["t2d"] = model.t2d.detach().cpu().to(torch.bool).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(export_config_dict(model.config, dtype), indent=2) + "\n")
    return out


def draft_config_from_export(cfg: dict) -> LlamaConfig:
    rope_parameters = {"rope_type": "default", **(cfg.get("rope_scaling") or {}), "rope_theta": cfg["rope_theta"]}
    config = LlamaConfig(
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"],
        num_hidden_layers=1,
        hidden_act=cfg["hidden_act"],
        rms_norm_eps=cfg["rms_norm_eps"],
        max_position_embeddings=cfg["max_position_embeddings"],
        vocab_size=cfg["vocab_size"],
        rope_parameters=rope_parameters,
        tie_word_embeddings=False,
    )
    config.draft_vocab_size = cfg["draft_vocab_size"]
    config.target_hidden_size = cfg.get("target_hidden_size", cfg["hidden_size"])
    config.aux_layers = exported_aux_layers(cfg)
    config.target_dtype = str(cfg.get("target_dtype") or cfg.get("torch_dtype") or "float32")
    config.architectures = ["LlamaForCausalLMEagle3"]
    return config


def exported_aux_layers(cfg: dict) -> list[int] | None:
    """The target layers (outputs, 0-indexed) an export was trained on; None for an export that
    does not say (the default [1, N/2-1, N-4])."""
    nested = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if nested is not None:
        return [int(i) for i in nested]
    top = cfg.get("eagle_aux_hidden_state_layer_ids")
    return [int(i) - 1 for i in top] if top is not None else None


def read_export_config(export_dir: str | Path) -> dict:
    """An export's ``config.json`` (the draft's, as written by `export_draft`)."""
    path = Path(export_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"draft directory {path.parent} has no config.json (expected an export: "
            "<output_dir>/final or `longdraft export`)"
        )
    return json.loads(path.read_text())


def load_exported_draft(export_dir: str | Path, target_embedding: torch.Tensor) -> Eagle3Draft:
    """Rebuild an ``Eagle3Draft`` from an export (weights cast to fp32 whatever the export's dtype);
    the embedding comes from the target, as in serving."""
    path = Path(export_dir)
    cfg = read_export_config(path)
    if cfg.get("architectures") != ["LlamaForCausalLMEagle3"]:
        raise ExportError(
            f"{path / 'config.json'}: architectures={cfg.get('architectures')}, expected ['LlamaForCausalLMEagle3']"
        )
    model = Eagle3Draft(draft_config_from_export(cfg), target_embedding.float())
    tensors = load_file(str(path / "model.safetensors"))
    model.set_vocab_mapping(tensors.pop("d2t"), tensors.pop("t2d"))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    missing = [k for k in missing if k not in ("d2t", "t2d")]
    if missing or unexpected:
        raise ExportError(f"{path / 'model.safetensors'}: missing keys {missing}, unexpected keys {unexpected}")
    return model
