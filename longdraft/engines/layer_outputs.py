"""Forward hooks that keep the outputs of chosen modules of an HF model (the aux layers, the final
norm) during one forward pass, so no other layer's states and no ``output_hidden_states`` tuple are
materialised. Shared by the HF engine and the evaluator's target; ``remove`` takes the hooks off."""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Mapping

import torch


def _first(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output  # type: ignore[return-value]


class LayerOutputs:
    def __init__(self, modules: Mapping[Hashable, torch.nn.Module]):
        self._outputs: dict[Hashable, torch.Tensor] = {}
        self._handles = [module.register_forward_hook(self._hook(key)) for key, module in modules.items()]

    def _hook(self, key: Hashable):
        def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
            self._outputs[key] = _first(output)

        return hook

    @contextlib.contextmanager
    def collecting(self) -> Iterator[dict[Hashable, torch.Tensor]]:
        """The outputs of the forward run inside; dropped on exit, so none outlives its use."""
        self._outputs.clear()
        try:
            yield self._outputs
        finally:
            self._outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def aux_layer_modules(model, aux_layers: list[int]) -> dict[Hashable, torch.nn.Module]:
    """The decoder layers ``aux_layers`` of an HF causal LM, by index."""
    layers = model.get_decoder().layers
    return {i: layers[i] for i in aux_layers}
