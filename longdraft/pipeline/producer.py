"""Producer: owns a target engine, prefills samples, writes one shard per SP rank to the store.

A packed micro-batch (`PackedGroup`) is prefilled document by document (the target never sees the
packed sequence as one text), its features laid end to end (``pack_features``) and split with the
packed layout here: an engine's own shard writers (vLLM's ``prefill_to_store``) split one request's
sequence, so packed groups always take the hand-back path.
"""

from __future__ import annotations

import time

import torch

from longdraft.engines.base import ShardRequest, TargetEngine, TargetFeatures, WrittenSample, tensor_specs
from longdraft.pipeline.records import PackedGroup, PackedMeta, PromptItem, SampleMeta
from longdraft.sharding.layout import ShardGrid
from longdraft.sharding.packing import pack_features
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

    def produce(self, items: list[PromptItem] | list[PackedGroup]) -> list[SampleMeta] | list[PackedMeta]:
        if items and isinstance(items[0], PackedGroup):
            return [self._produce_packed(group) for group in items]
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

    def _produce_packed(self, group: PackedGroup) -> PackedMeta:
        start = time.perf_counter()
        docs = [item.input_ids for item in group.items]
        layout = self.grid.for_documents([len(ids) for ids in docs])
        for earlier in range(group.attempt):
            self.store.discard(self._key(group.items[0], earlier, "p"), layout.sp_size)
        key = self._key(group.items[0], group.attempt, "p")
        features = self.engine.prefill(docs)  # each document alone
        tensors = pack_features([_tensors(ids, feat) for ids, feat in zip(docs, features)])
        handle = self.store.put_sample(key, split_sample(tensors, layout))
        shapes, dtypes = tensor_specs(tensors)
        self.busy_s += time.perf_counter() - start
        self.samples += len(docs)
        self.tokens += layout.length
        return PackedMeta(
            seqs=group.seqs,
            sample_ids=[item.sample_id for item in group.items],
            key=key,
            packed_loss_masks=[item.packed_loss_mask for item in group.items],
            shapes=shapes,
            dtypes=dtypes,
            layout=layout,
            handle=handle,
            replica=group.replica,
            produced_by=self.producer_id,
        )

    def _put(self, req: ShardRequest, feat: TargetFeatures) -> WrittenSample:
        tensors = _tensors(req.input_ids, feat)
        handle = self.store.put_sample(req.key, split_sample(tensors, req.layout))
        return WrittenSample(handle, *tensor_specs(tensors))

    def _key(self, item: PromptItem, attempt: int, kind: str = "") -> str:
        """``kind`` "p": a packed micro-batch, named by its first sample."""
        stem = f"{self.run_key}_{'e' if item.held_out else 's'}{kind}{item.seq}"
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


def _tensors(input_ids, feat: TargetFeatures) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor(list(input_ids), dtype=torch.int64),
        "aux_hidden": feat.aux_hidden.cpu(),
        "last_hidden": feat.last_hidden.cpu(),
    }
