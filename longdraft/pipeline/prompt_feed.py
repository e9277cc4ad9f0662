"""The run's training prompts, drawn lazily from the sample stream one global batch at a time.

Lives in the controller: rows are read and tokenised only as producers need them (a bounded pool
ahead of the trainers), so neither start-up time nor memory grows with the data set.
"""

from __future__ import annotations

from collections import deque

from longdraft.config import Config
from longdraft.pipeline.records import PromptItem
from longdraft.train.setup import load_tokenizer, training_stream


class PromptFeed:
    def __init__(self, cfg: Config, start_step: int, start_position: int):
        t = cfg.training
        self.stream = training_stream(cfg, load_tokenizer(cfg), start_position)
        self.batch_size = t.batch_size
        self.total = (t.num_steps - start_step) * t.batch_size  # prompts this run trains
        self._next_seq = start_step * t.batch_size
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
        return [self._ready.popleft() for _ in range(min(count, len(self._ready)))]
