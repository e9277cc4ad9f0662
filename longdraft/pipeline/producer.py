"""Producer: owns a target engine, prefills samples, writes one shard per SP rank to the store."""

from __future__ import annotations

import time

import torch

from longdraft.engines.base import ShardRequest, TargetEngine, TargetFeatures, WrittenSample, tensor_specs
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
        self.tokens = 0
        self.written_by_engine = 0  # samples whose shards the engine's own workers put

    def produce(self, items: list[PromptItem]) -> list[SampleMeta]:
        start = time.perf_counter()
        requests = []
        for item in items:
            layout = self.grid.for_length(len(item.input_ids))
            for earlier in range(item.attempt):  # what a producer that died mid-batch may have left
                self.store.discard(self._key(item, earlier), layout.sp_size)
            requests.append(ShardRequest(self._key(item, item.attempt), item.input_ids, layout))
        written = self.engine.prefill_to_store(requests, self.store)
        if written is not None:
            self.written_by_engine += len(items)
        else:  # the engine hands the features back: split and put them here
            features = self.engine.prefill([item.input_ids for item in items])
            written = [self._put(req, feat) for req, feat in zip(requests, features)]
        metas = [
            SampleMeta(
                seq=item.seq,
                sample_id=item.sample_id,
                key=req.key,
                packed_loss_mask=item.packed_loss_mask,
                shapes=w.shapes,
                dtypes=w.dtypes,
                layout=req.layout,
                handle=w.handle,
                held_out=item.held_out,
                stream_position=item.stream_position,
                epoch=item.epoch,
                produced_by=self.producer_id,
            )
            for item, req, w in zip(items, requests, written)
        ]
        self.busy_s += time.perf_counter() - start
        self.samples += len(items)
        self.tokens += sum(len(item.input_ids) for item in items)
        return metas

    def _put(self, req: ShardRequest, feat: TargetFeatures) -> WrittenSample:
        tensors = {
            "input_ids": torch.tensor(list(req.input_ids), dtype=torch.int64),
            "aux_hidden": feat.aux_hidden.cpu(),
            "last_hidden": feat.last_hidden.cpu(),
        }
        handle = self.store.put_sample(req.key, split_sample(tensors, req.layout))
        return WrittenSample(handle, *tensor_specs(tensors))

    def _key(self, item: PromptItem, attempt: int) -> str:
        stem = f"{self.run_key}_{'e' if item.held_out else 's'}{item.seq}"
        return f"{stem}a{attempt}" if attempt else stem

    def report(self) -> dict:
        per_s = lambda n: n / self.busy_s if self.busy_s else 0.0
        return {
            "producer": self.producer_id,
            "samples": self.samples,
            "tokens": self.tokens,
            "written_by_engine": self.written_by_engine,
            "busy_s": self.busy_s,
            "samples_per_s": per_s(self.samples),
            "tokens_per_s": per_s(self.tokens),
            "store": self.store.stats(),
        }

    def close(self) -> None:
        """Shut the engine down (a vLLM engine's processes and shared memory) and the store client."""
        self.engine.close()
        self.store.close()
