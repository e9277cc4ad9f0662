"""The single-device batch source: samples streamed in seeded epoch order, prefilled by the engine
on the fly, each one the ``S = 1`` case of the shard contract. With ``training.tokens_per_micro_batch``
a step's samples are packed: whole documents, longest first, into micro-batches of at most that
many tokens (``sharding/packing.py``); each document is still prefilled alone."""

from __future__ import annotations

import time

import torch

from longdraft.config import Config
from longdraft.data.dataset import Sample
from longdraft.data.stream import SampleStream
from longdraft.engines.base import TargetEngine
from longdraft.sharding.batch import ShardBatch
from longdraft.sharding.device_batches import DeviceBatches
from longdraft.sharding.packing import plan_micro_batches
from longdraft.sharding.reader import full_sequence_batch, packed_sequence_batch, should_skip
from longdraft.train.batch_source import StepBatches


def prefill_batch(samples: list[Sample], engine: TargetEngine, ttt_length: int, device) -> ShardBatch:
    """Prefill the target on ``samples`` and collate them as one single-device micro-batch."""
    features = engine.prefill([s.input_ids for s in samples])
    tensors = [
        {"input_ids": torch.tensor(s.input_ids), "aux_hidden": f.aux_hidden, "last_hidden": f.last_hidden}
        for s, f in zip(samples, features)
    ]
    return full_sequence_batch(tensors, [s.packed_loss_mask for s in samples], ttt_length).to(device)


def prefill_packed(samples: list[Sample], engine: TargetEngine, ttt_length: int, device) -> ShardBatch:
    """Prefill the target on each of ``samples`` alone (never the packed text as one sequence), then
    lay them end to end as one packed micro-batch."""
    features = engine.prefill([s.input_ids for s in samples])
    tensors = [
        {"input_ids": torch.tensor(s.input_ids), "aux_hidden": f.aux_hidden, "last_hidden": f.last_hidden}
        for s, f in zip(samples, features)
    ]
    return packed_sequence_batch(tensors, [s.packed_loss_mask for s in samples], ttt_length).to(device)


class LocalSource:
    def __init__(self, cfg: Config, stream: SampleStream, held_out: list[Sample], engine: TargetEngine, device):
        self.cfg, self.stream, self.held_out, self.engine, self.device = cfg, stream, held_out, engine, device

    def resume_at(self, stream_position: int) -> None:
        if stream_position != self.stream.position:
            raise RuntimeError(
                f"the checkpoint continues the sample stream at row {stream_position}, but the "
                f"stream was opened at row {self.stream.position}"
            )

    @property
    def stream_position(self) -> int:
        return self.stream.position

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def _batches(self, samples: list[Sample]) -> DeviceBatches:
        """Collated on the host; the step gets them on the device one micro-batch at a time."""
        mb, k = self.cfg.training.micro_batch_size, self.cfg.training.ttt_length
        budget = self.cfg.training.tokens_per_micro_batch
        if budget is None:
            host = [prefill_batch(samples[j : j + mb], self.engine, k, "cpu") for j in range(0, len(samples), mb)]
        else:
            plan = plan_micro_batches([s.length for s in samples], budget)
            host = [prefill_packed([samples[i] for i in group], self.engine, k, "cpu") for group in plan]
        return DeviceBatches(host, self.device)

    def eval_batches(self) -> DeviceBatches:
        return self._batches(self.held_out if self.cfg.evaluates_during_training else [])

    def next_step(self) -> StepBatches:
        t = self.cfg.training
        start = time.perf_counter()
        chosen = self.stream.take(t.batch_size)
        kept = [s for s in chosen if not should_skip(s.packed_loss_mask, t.min_loss_tokens, s.length)]
        batches = self._batches(kept)
        return StepBatches(batches, len(kept), len(chosen) - len(kept), time.perf_counter() - start)

    def finish(self) -> None:
        pass
