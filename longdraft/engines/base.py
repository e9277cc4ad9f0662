"""The target inference-engine interface: prefill -> EAGLE-3 features.

An engine only turns token ids into features. Everything else a run needs from the target (its
config, embedding and ``lm_head``) is read from the checkpoint directory (``target/spec.py``),
so nothing outside an engine's own file depends on which engine produced the features.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from longdraft.sharding.layout import ShardLayout
from longdraft.store.base import SampleHandle, TensorStore
from longdraft.target.aux_layers import default_aux_layers, resolve_aux_layers  # noqa: F401 (moved; old imports)


@dataclass
class TargetFeatures:
    """Features of one sample (no padding)."""

    aux_hidden: torch.Tensor  # [L, 3H]: outputs of the aux layers, concatenated in ascending layer order
    last_hidden: torch.Tensor  # [L, H]: last hidden state after the final norm (lm_head input)

    @property
    def length(self) -> int:
        return int(self.last_hidden.shape[0])


@dataclass
class ShardRequest:
    """One sample for an engine that writes its SP shards itself: store key, token ids, layout."""

    key: str
    input_ids: Sequence[int]
    layout: ShardLayout


@dataclass
class WrittenSample:
    """What an engine put into the store for one `ShardRequest`."""

    handle: SampleHandle
    shapes: dict[str, tuple[int, ...]]  # whole-sample tensor shapes (before the split)
    dtypes: dict[str, str]


def tensor_specs(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(shapes, dtype names) of a sample's tensors, as `WrittenSample` and `SampleMeta` carry them."""
    return (
        {n: tuple(t.shape) for n, t in tensors.items()},
        {n: str(t.dtype).removeprefix("torch.") for n, t in tensors.items()},
    )


class TargetEngine(ABC):
    """A frozen target model that turns token ids into EAGLE-3 training features."""

    @abstractmethod
    def prefill(self, batch: Sequence[Sequence[int]]) -> list[TargetFeatures]:
        """Run the target over each sequence; return one unpadded TargetFeatures per sequence."""

    def prefill_to_store(self, requests: Sequence[ShardRequest], store: TensorStore) -> list[WrittenSample] | None:
        """Prefill and write each request's shards into ``store`` where the features are (the engine's
        own workers). None: this engine (or this store) cannot, and the producer splits `prefill`'s
        features itself."""
        return None

    def close(self) -> None:
        """Release the engine's processes and memory."""

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    @property
    @abstractmethod
    def aux_layers(self) -> list[int]: ...
