"""Metadata that travels between controller, producers and trainer ranks (never tensors)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from longdraft.sharding.layout import ShardLayout
from longdraft.store.base import SampleHandle


@dataclass
class PromptItem:
    """One sample to prefill: its place in its stream and its tokens."""

    seq: int  # position in the sample stream: step = seq // batch_size (held-out: index in the eval set)
    sample_id: str  # "file:line"
    input_ids: list[int]
    packed_loss_mask: list[int]
    held_out: bool = False  # a held-out sample for training.eval_every, not a training sample
    stream_position: int = 0  # rows of the training stream consumed after this sample's whole batch
    epoch: int = 0
    attempt: int = 0  # times it was issued again after its producer died


@dataclass
class SampleMeta:
    """What a producer returns for a prefilled sample and what every SP rank's queue receives."""

    seq: int
    sample_id: str
    key: str
    packed_loss_mask: list[int]
    shapes: dict[str, tuple[int, ...]]  # global shapes
    dtypes: dict[str, str]
    layout: ShardLayout
    handle: SampleHandle
    held_out: bool = False
    stream_position: int = 0
    epoch: int = 0
    produced_by: int = 0

    @property
    def length(self) -> int:
        """L after truncation."""
        return self.layout.length

    def for_rank(self, r: int) -> SampleMeta:
        """The copy for SP rank ``r``: its store handle references only shard ``r``."""
        return replace(self, handle=self.handle.for_rank(r))


@dataclass
class PackedGroup:
    """One packed micro-batch to prefill (``training.tokens_per_micro_batch``): whole documents, each
    prefilled alone, trained together by DP replica ``replica``."""

    items: list[PromptItem]
    replica: int
    attempt: int = 0  # times it was issued again after its producer died
    held_out: bool = False  # held-out samples are never packed

    @property
    def seqs(self) -> list[int]:
        return [item.seq for item in self.items]


@dataclass
class PackedMeta:
    """What a producer returns for a `PackedGroup` and what every SP rank of its replica receives."""

    seqs: list[int]
    sample_ids: list[str]
    key: str
    packed_loss_masks: list[list[int]]  # one per document
    shapes: dict[str, tuple[int, ...]]  # global shapes of the packed sequence
    dtypes: dict[str, str]
    layout: ShardLayout  # with the document lengths
    handle: SampleHandle
    replica: int
    produced_by: int = 0
    held_out: bool = False

    @property
    def length(self) -> int:
        return self.layout.length

    def for_rank(self, r: int) -> PackedMeta:
        return replace(self, handle=self.handle.for_rank(r))


@dataclass
class StepEnd:
    """With packing, ends a DP replica's micro-batches of one step (a replica may have none): where the
    stream stands after the step and how many of its samples the controller skipped (too few loss
    tokens; counted on replica 0 only)."""

    stream_position: int
    epoch: int
    skipped: int = 0
    held_out: bool = False


def seqs_of(unit) -> list[int]:
    """Training samples of a unit the controller issues or dispatches (none for held-out or markers)."""
    if unit.held_out or isinstance(unit, StepEnd):
        return []
    return list(unit.seqs) if isinstance(unit, PackedGroup | PackedMeta) else [unit.seq]


@dataclass
class EndOfHeldOut:
    """Put into every trainer queue after the held-out samples, before the first training sample."""


@dataclass
class EndOfRun:
    """Put into every trainer queue after the last sample."""

    reason: str = "done"
