"""Producer: owns a target engine, prefills samples, writes one shard per SP rank to the store."""

from __future__ import annotations

import time

import torch

from longdraft.engines.base import TargetEngine
from longdraft.pipeline.records import PromptItem, SampleMeta
from longdraft.sharding.layout import ShardGrid
from longdraft.sharding.split import split_sample
from longdraft.store.base import TensorStore


class Producer:
    def __init__(self, producer_id: int, engine: TargetEngine, store: TensorStore, grid: ShardGrid, run_key: str):
        self.producer_id = producer_id
        self.engine = engine
        self.store = store
        self.grid = grid
        self.run_key = run_key
        self.busy_s = 0.0
        self.samples = 0

    def produce(self, items: list[PromptItem]) -> list[SampleMeta]:
        start = time.perf_counter()
        features = self.engine.prefill([item.input_ids for item in items])
        metas = []
        for item, feat in zip(items, features):
            layout = self.grid.for_length(len(item.input_ids))
            tensors = {
                "input_ids": torch.tensor(item.input_ids, dtype=torch.int64),
                "aux_hidden": feat.aux_hidden.cpu(),
                "last_hidden": feat.last_hidden.cpu(),
            }
            for earlier in range(item.attempt):  # what a producer that died mid-batch may have left
                self.store.discard(self._key(item, earlier), layout.sp_size)
            key = self._key(item, item.attempt)
            handle = self.store.put_sample(key, split_sample(tensors, layout))
            metas.append(SampleMeta(
                seq=item.seq, sample_id=item.sample_id, key=key, packed_loss_mask=item.packed_loss_mask,
                shapes={n: tuple(t.shape) for n, t in tensors.items()},
                dtypes={n: str(t.dtype).removeprefix("torch.") for n, t in tensors.items()},
                layout=layout, handle=handle, held_out=item.held_out, stream_position=item.stream_position,
                epoch=item.epoch, produced_by=self.producer_id,
            ))
        self.busy_s += time.perf_counter() - start
        self.samples += len(items)
        return metas

    def _key(self, item: PromptItem, attempt: int) -> str:
        stem = f"{self.run_key}_{'e' if item.held_out else 's'}{item.seq}"
        return f"{stem}a{attempt}" if attempt else stem

    def report(self) -> dict:
        return {"producer": self.producer_id, "samples": self.samples, "busy_s": self.busy_s,
                "samples_per_s": self.samples / self.busy_s if self.busy_s else 0.0, "store": self.store.stats()}
