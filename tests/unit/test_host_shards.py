"""Read shards wait on the host: between steps a trainer rank's source holds nothing on the device,
and its read-ahead is bounded by ``training.prefetch_mb`` bytes.

The device is ``meta``: not the CPU, so any tensor the source parks on the device is visible (a meta
tensor) without a GPU. The source is the real ``ShardSource`` over shards split by the real
``split_sample``; the Ray queue and store are replaced by in-process ones with the same methods.
"""

from __future__ import annotations

import gc
import queue
import time
import warnings

import torch

from longdraft.config import config_from_dict
from longdraft.engines.base import tensor_specs
from longdraft.pipeline.records import EndOfHeldOut, EndOfRun, SampleMeta
from longdraft.pipeline.shard_source import ShardSource
from longdraft.sharding.byte_queue import ByteBoundedQueue
from longdraft.sharding.device_batches import DeviceBatches, batch_bytes
from longdraft.sharding.layout import ShardGrid
from longdraft.sharding.split import split_sample

LENGTH, HIDDEN = 32, 16


class DictStore:
    def __init__(self):
        self.shards = {}

    def put(self, key: str, shards) -> str:
        for r, shard in enumerate(shards):
            self.shards[(key, r)] = shard
        return key

    def get_shard(self, handle, r: int, *, delete: bool = True):
        return self.shards.pop((handle, r)) if delete else self.shards[(handle, r)]


class LocalQueue:
    """``ray.util.queue.Queue``'s ``get`` on a local queue."""

    def __init__(self):
        self.q = queue.Queue()

    def get(self, block=True, timeout=None):
        from ray.util.queue import Empty

        try:
            return self.q.get(block, timeout)
        except queue.Empty:
            raise Empty from None


def _cfg(tmp_path, **training):
    tree = {
        "data": {"train_path": str(tmp_path / "t.jsonl"), "eval_path": str(tmp_path / "e.jsonl")},
        "model": {"target_path": str(tmp_path)},
        "training": {"max_seq_length": LENGTH, "batch_size": 2, "num_steps": 2, "eval_every": 1, **training},
        "output": {"dir": str(tmp_path / "out")},
    }
    return config_from_dict(tree, base_dir=tmp_path)


def _fill(cfg, store: DictStore, q: LocalQueue, held_out: int, train: int) -> None:
    grid = ShardGrid.from_training(cfg.training)
    for seq in range(held_out + train):
        is_held = seq < held_out
        tensors = {
            "input_ids": torch.arange(LENGTH, dtype=torch.int64),
            "aux_hidden": torch.randn(LENGTH, 3 * HIDDEN),
            "last_hidden": torch.randn(LENGTH, HIDDEN),
        }
        layout = grid.for_length(LENGTH)
        key = f"k{seq}"
        shapes, dtypes = tensor_specs(tensors)
        handle = store.put(key, split_sample(tensors, layout))
        meta = SampleMeta(seq, f"f:{seq}", key, [1] * LENGTH, shapes, dtypes, layout, handle, held_out=is_held)
        q.q.put(meta)
        if seq == held_out - 1:
            q.q.put(EndOfHeldOut())
    q.q.put(EndOfRun())


def _meta_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance over every object touches deprecated torch attributes
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.device.type == "meta")


def test_no_shard_on_the_device_between_steps(tmp_path):
    cfg = _cfg(tmp_path)
    store, q = DictStore(), LocalQueue()
    _fill(cfg, store, q, held_out=3, train=4)
    source = ShardSource(cfg, 0, 0, q, _Controller(), store, torch.device("meta"), 0)
    before = _meta_tensors()
    held = source.eval_batches()
    assert len(held) == 3
    assert _meta_tensors() == before, "held-out shards were moved to the device and kept there"
    for _ in range(2):
        step = source.next_step()
        time.sleep(0.2)  # the prefetch thread reads ahead meanwhile
        assert _meta_tensors() == before, "the source holds batches on the device between steps"
        seen = 0
        for batch in step.batches:  # the step still gets device tensors, one micro-batch at a time
            assert batch.aux_hidden.device.type == "meta" and batch.input_ids.device.type == "meta"
            seen += 1
        assert seen == 2
        del batch
        assert _meta_tensors() == before
    assert all(b.aux_hidden.device.type == "meta" for b in held)
    source.finish()


class _Controller:
    class _Mark:
        def remote(self, *args):
            pass

    mark = _Mark()


def test_one_micro_batch_on_the_device_at_a_time():
    host = [_host_batch() for _ in range(3)]
    live = []
    for batch in DeviceBatches(host, torch.device("meta")):
        gc.collect()
        live.append(_meta_tensors())
        del batch
    assert live == [len(host[0].tensors())] * 3  # the six tensors of one micro-batch, never two


def _host_batch():
    from longdraft.sharding.batch import ShardBatch

    t = lambda *s: torch.zeros(*s)
    return ShardBatch(t(1, 1, 8), t(1, 1, 8, 12), t(1, 1, 8, 4), t(1, 1, 8), t(1, 1, 8), t(8), lengths=(8,))


def test_prefetch_is_bounded_by_bytes(tmp_path):
    cfg = _cfg(tmp_path, prefetch_mb=0.02, eval_every=0)  # about three samples' shards of 7 KiB
    cfg.data.eval_path = None
    store, q = DictStore(), LocalQueue()
    _fill(cfg, store, q, held_out=0, train=4 * cfg.accumulation_steps)
    source = ShardSource(cfg, 0, 0, q, _Controller(), store, torch.device("meta"), 0)
    source.cfg.training.num_steps = 4
    budget = int(cfg.training.prefetch_mb * (1 << 20))
    for _ in range(4):
        step = source.next_step()
        one = max(batch_bytes(b) for b in step.batches.host)
        time.sleep(0.3)
        assert source._prefetched.queued_bytes <= budget + one
    assert one <= source._prefetched.peak_bytes <= budget + one  # it read ahead, within the budget
    source.finish()


def test_byte_queue_holds_at_most_the_budget_or_one_item():
    q = ByteBoundedQueue(100)
    assert q.put("a", 60) and q.queued_bytes == 60
    import threading

    stop = threading.Event()
    t = threading.Thread(target=lambda: q.put("b", 60, stop))
    t.start()
    time.sleep(0.2)
    assert q.queued_bytes == 60, "a put past the budget did not wait"
    assert q.get(1) == "a"
    t.join(2)
    assert q.queued_bytes == 60 and q.get(1) == "b"
    assert q.put("big", 500) and q.peak_bytes == 500  # one item larger than the budget still goes through
