"""Metadata that travels between controller, producers and trainer ranks (never tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from longdraft.store.base import SampleHandle


@dataclass
class PromptItem:
    """One sample to prefill: its place in the run's sample stream and its tokens."""

    seq: int  # position in the global sample stream: step = seq // batch_size
    sample_id: str  # "file:line"
    input_ids: list[int]
    packed_loss_mask: list[int]


@dataclass
class SampleMeta:
    """What a producer returns for a prefilled sample and what every SP rank's queue receives."""

    seq: int
    sample_id: str
    key: str
    length: int  # L after truncation
    packed_loss_mask: list[int]
    shapes: dict[str, tuple[int, ...]]  # global shapes
    dtypes: dict[str, str]
    layout: dict  # ShardLayout fields: length, ulysses, ring, ttt_length, layout
    handle: SampleHandle
    usp_sharded: bool = True
    produced_by: int = 0
    extra: dict = field(default_factory=dict)

    def for_rank(self, r: int) -> "SampleMeta":
        """The copy for SP rank ``r``: its store handle references only shard ``r``."""
        return replace(self, handle=self.handle.for_rank(r))


@dataclass
class EndOfRun:
    """Put into every trainer queue after the last sample."""

    reason: str = "done"
