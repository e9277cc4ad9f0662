"""The target side of speculative decoding: an HF causal LM with a KV cache and aux-feature capture.

``forward(ids)`` runs the new tokens against the cache and returns, per new token, the EAGLE-3 aux
features (outputs of ``aux_layers``, concatenated in ascending order) and the greedy next token.
``crop(n)`` drops the cache back to ``n`` tokens after a partial acceptance.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from longdraft.engines.layer_outputs import LayerOutputs, aux_layer_modules
from longdraft.target.spec import TargetSpec


@dataclass
class TargetStep:
    aux: torch.Tensor  # [T, 3H] float32: aux features of the T tokens just run
    greedy: list[int]  # [T]: the target's argmax next token after each of them


def stop_token_ids(model) -> set[int]:
    """EOS ids of an HF model (generation config and model config)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is None:
            continue
        ids.update([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    return ids


def new_cache(model) -> DynamicCache:
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


def forward_with_cache(model, input_ids: torch.Tensor, cache: DynamicCache):
    """``model(input_ids)`` appending to ``cache`` in place (the keyword is ``cache`` from transformers 5.x on)."""
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return model(input_ids=input_ids, use_cache=True, **{key: cache})


class TargetRunner:
    def __init__(self, model, aux_layers: Sequence[int] | None = None):
        self.model = model.eval()
        spec = TargetSpec.from_config(model.config)
        self.aux_layers = spec.aux_layers(aux_layers)
        self.max_positions = spec.max_position_embeddings or 1 << 30
        self._captured = LayerOutputs(aux_layer_modules(model, self.aux_layers))
        self.cache: DynamicCache | None = None
        self.length = 0

    @property
    def device(self) -> torch.device:
        return self.model.get_output_embeddings().weight.device

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def reset(self) -> None:
        self.cache = new_cache(self.model)
        self.length = 0

    @torch.no_grad()  # not inference_mode: callers may mix the outputs with autograd tensors
    def forward(self, ids: Sequence[int]) -> TargetStep:
        if self.cache is None:
            self.reset()
        if not ids:
            raise ValueError("TargetRunner.forward() needs at least one token")
        if self.length + len(ids) > self.max_positions:
            raise ValueError(
                f"sequence of {self.length + len(ids)} tokens exceeds the target's "
                f"max_position_embeddings={self.max_positions}"
            )
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        with self._captured.collecting() as captured:
            out = forward_with_cache(self.model, input_ids, self.cache)
            aux = torch.cat([captured[i][0] for i in self.aux_layers], dim=-1).float()
        self.length += len(ids)
        return TargetStep(aux, out.logits[0].argmax(-1).tolist())

    def start(self, prompt_ids: Sequence[int]) -> TargetStep:
        self.reset()
        return self.forward(prompt_ids)

    def crop(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} tokens to {length}")
        if length < self.length:
            self.cache.crop(length - self.length)  # negative: drop that many tokens (any transformers version)
        self.length = length

    def close(self) -> None:
        self._captured.remove()
