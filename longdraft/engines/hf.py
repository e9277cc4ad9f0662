"""HF transformers target engine: prefill a local checkpoint and capture EAGLE-3 features.

Aux features are the outputs of decoder layers `aux_layers` (0-indexed; for i < N-1 the output
of layer i is `hidden_states[i + 1]` of `output_hidden_states`), captured with forward hooks so
no logits and no other layers' states are materialised. `last_hidden` is the final-norm output,
so `lm_head(last_hidden)` are the target logits (before the spec's logit transform).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from longdraft.device import resolve_device
from longdraft.engines.base import TargetEngine, TargetFeatures
from longdraft.engines.layer_outputs import LayerOutputs, aux_layer_modules
from longdraft.target.spec import TargetSpec

_DTYPES = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16}


def load_causal_lm(
    path: str | Path, device: torch.device, dtype: str | torch.dtype = "auto", device_map: str | None = None
):
    """A local HF checkpoint as a frozen causal LM on ``device`` (never downloads), or spread over the
    visible GPUs by ``device_map`` (transformers' own: ``auto``, ``balanced``, ``sequential``)."""
    from transformers import AutoModelForCausalLM

    p = Path(path)
    TargetSpec.load(p)  # a directory without a config, or a family whose quirks are unknown: refused by name
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected one of {sorted(_DTYPES)} or a torch.dtype")
        dtype = _DTYPES[dtype]
    if device_map is not None:
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, dtype=dtype, device_map=device_map)
    else:
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, dtype=dtype).to(device)
    return model.eval().requires_grad_(False)


def hf_device_map(setting: str | None, device: torch.device, producer_gpus: float | None) -> str | None:
    """``inference.device_map`` as passed to ``from_pretrained``: null spreads the target (``auto``)
    only over a producer of more than one GPU; on one device the model is simply moved there."""
    if setting is not None:
        return setting
    return "auto" if device.type == "cuda" and (producer_gpus or 0) > 1 else None


def equal_length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Batch indices grouped by length, in order of first appearance: each group prefills without
    padding, so no attention mask is passed and no L x L mask is ever built."""
    groups: dict[int, list[int]] = {}
    for index, n in enumerate(lengths):
        groups.setdefault(n, []).append(index)
    return list(groups.values())


class HFTargetEngine(TargetEngine):
    def __init__(
        self,
        path: str | Path,
        aux_layers: Sequence[int] | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "auto",
        output_device: str | torch.device | None = None,
        device_map: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.output_device = torch.device(output_device) if output_device is not None else self.device
        model = load_causal_lm(path, self.device, dtype, device_map)
        self.model = model
        self.spec = TargetSpec.load(path)
        self._decoder = model.get_decoder()
        self._aux_layers = self.spec.aux_layers(aux_layers)
        self._captured = LayerOutputs({**aux_layer_modules(model, self._aux_layers), "norm": self._decoder.norm})

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    @property
    def aux_layers(self) -> list[int]:
        return list(self._aux_layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_output_embeddings().weight.dtype

    @torch.inference_mode()
    def prefill(self, batch: Sequence[Sequence[int]]) -> list[TargetFeatures]:
        if not batch:
            return []
        lengths = [len(ids) for ids in batch]
        if min(lengths) == 0:
            raise ValueError(f"prefill got an empty sequence at batch index {lengths.index(0)}")
        out: list[TargetFeatures | None] = [None] * len(batch)
        for group in equal_length_groups(lengths):
            for index, features in zip(group, self._prefill_unpadded([batch[i] for i in group])):
                out[index] = features
        return out

    def _prefill_unpadded(self, batch: Sequence[Sequence[int]]) -> list[TargetFeatures]:
        """Sequences of one length, as one batch without an attention mask: transformers then takes
        the causal kernel (flash / SDPA ``is_causal``) and builds no [B, 1, L, L] mask (64 GiB at 128K)."""
        input_ids = torch.as_tensor([list(ids) for ids in batch], dtype=torch.long)
        bad = input_ids[(input_ids < 0) | (input_ids >= self.vocab_size)]
        if bad.numel():
            raise ValueError(f"token id {bad[0].item()} is outside the target vocab [0, {self.vocab_size})")
        first = self.model.get_input_embeddings().weight.device  # the device map's first, or self.device
        with self._captured.collecting() as captured:
            self._decoder(input_ids=input_ids.to(first), use_cache=False)
            last = captured["norm"]
            aux = torch.cat([captured[i].to(last.device) for i in self._aux_layers], dim=-1)
        return [
            TargetFeatures(aux[b].to(self.output_device, copy=True), last[b].to(self.output_device, copy=True))
            for b in range(len(batch))
        ]

    def close(self) -> None:
        """Takes the capture hooks off the model (it may be used on without them)."""
        self._captured.remove()
