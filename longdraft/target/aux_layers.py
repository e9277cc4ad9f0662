"""Which target layers feed the draft, in our numbering (outputs of layers) and vLLM's (inputs).

Low in the import graph: the draft config, the engines, the evaluator and preflight all resolve the
same ids here.
"""

from __future__ import annotations

from collections.abc import Sequence


def default_aux_layers(num_layers: int) -> list[int]:
    """EAGLE-3 default: outputs of layers [1, N/2-1, N-4] (0-indexed)."""
    return [1, num_layers // 2 - 1, num_layers - 4]


def resolve_aux_layers(aux_layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """Validate aux layer ids (3 distinct ids in [0, N)) and return them ascending."""
    if aux_layers is None:
        layers = default_aux_layers(num_layers)
        if len(set(layers)) != 3 or min(layers) < 0:
            raise ValueError(
                f"the default aux layers [1, N/2-1, N-4] = {layers} are not 3 distinct valid layers "
                f"for a target with N={num_layers} layers; set model.aux_layers explicitly"
            )
        return sorted(layers)
    layers = [int(x) for x in aux_layers]
    if len(layers) != 3:
        raise ValueError(f"aux_layers={layers}: expected exactly 3 layer ids")
    if len(set(layers)) != 3:
        raise ValueError(f"aux_layers={layers}: expected 3 distinct layer ids")
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad:
        raise ValueError(
            f"aux_layers={layers}: ids {bad} are outside [0, {num_layers}) for a target with {num_layers} layers"
        )
    return sorted(layers)


def vllm_layer_ids(aux_layers: Sequence[int]) -> list[int]:
    """vLLM numbers the *input* of layer ``k`` as ``k``: our output of layer ``i`` is its ``i + 1``."""
    return [int(i) + 1 for i in aux_layers]
