"""The run's training prompts, drawn lazily from the sample stream one global batch at a time.

Lives in the controller: rows are read and tokenised only as producers need them (a bounded pool
ahead of the trainers), so neither start-up time nor memory grows with the data set.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from longdraft.config import Config
from longdraft.pipeline.records import PromptItem
from longdraft.train.setup import load_tokenizer, training_stream


@dataclass(frozen=True)
class FeedSpec:
    """Where the run's prompts start; picklable, so the driver hands it to the controller's actor,
    which opens the stream itself (the driver never reads the training data)."""

    cfg: Config
    start_step: int  # the first step this run trains (the checkpoint's step on resume, else 0)
    start_position: int  # the stream row that step starts at


class PromptFeed:
    def __init__(self, spec: FeedSpec):
        cfg, t = spec.cfg, spec.cfg.training
        self.stream = training_stream(cfg, load_tokenizer(cfg), spec.start_position)
        self.batch_size = t.batch_size
        self.total = (t.num_steps - spec.start_step) * t.batch_size  # prompts this run trains
        self._next_seq = spec.start_step * t.batch_size
        self._drawn = 0
        self._ready: deque[PromptItem] = deque()

    def take(self, count: int) -> list[PromptItem]:
        while len(self._ready) < count and self._drawn < self.total:
            samples = self.stream.take(self.batch_size)
            position, epoch = self.stream.position, self.stream.epoch  # after the whole batch: a step's resume point
            for s in samples:
                self._ready.append(
                    PromptItem(
                        self._next_seq,
                        s.sample_id,
                        s.input_ids,
                        s.packed_loss_mask,
                        stream_position=position,
                        epoch=epoch,
                    )
                )
                self._next_seq += 1
            self._drawn += len(samples)
            if self._drawn >= self.total:
                self.stream.close()  # every prompt of the run drawn: end its tokenizer pool, if any
        return [self._ready.popleft() for _ in range(min(count, len(self._ready)))]
