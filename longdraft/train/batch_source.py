"""What the training loop reads from: one optimizer step's micro-batches at a time.

Two sources exist: ``train/local_source.py`` (the target prefilled on the fly, whole sequences)
and ``pipeline/shard_source.py`` (a trainer rank's own shards from the store). The loop treats
them alike, so eval, resume, skip counting and metrics are the same on one device and on any
DP x U x R layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from longdraft.sharding.batch import ShardBatch

SKIP_TOO_FEW_LOSS_TOKENS = "too_few_loss_tokens"


@dataclass
class StepBatches:
    # this rank's micro-batches of the step (skipped samples left out); sources hand ``DeviceBatches``
    batches: Sequence[ShardBatch]
    samples: int  # samples this rank trains in the step
    skipped: int  # samples skipped for too few loss tokens (decided from the global mask)
    data_wait_s: float = 0.0  # time spent waiting for the data

    def query_tokens(self) -> int:
        """Real query tokens of the step, counted on the host copies (no device copy)."""
        count = getattr(self.batches, "query_tokens", None)
        return count() if count is not None else sum(b.query_tokens() for b in self.batches)


class BatchSource(Protocol):
    def resume_at(self, stream_position: int) -> None:
        """Check that the stream continues at row ``stream_position`` (a checkpoint's)."""

    def eval_batches(self) -> Sequence[ShardBatch]:
        """This rank's held-out micro-batches (empty when the run does not evaluate)."""

    def next_step(self) -> StepBatches: ...

    @property
    def stream_position(self) -> int:
        """Rows of the training stream consumed so far (what a checkpoint stores to resume)."""

    @property
    def epoch(self) -> int: ...

    def finish(self) -> None:
        """Called after the last step: a source may check that nothing is left over."""
