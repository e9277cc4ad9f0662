"""A trainer rank's batch source: its own shards, named by metadata on its queue, read from the store.

A background thread fetches the rank's shards ahead of the steps and rebuilds the local batches;
it issues no collectives (ARCHITECTURE.md, invariant 2). Held-out samples come first on the queue
(up to ``EndOfHeldOut``) and are kept, on the host, for the whole run. Read shards wait in host memory
(pinned on CUDA), at most ``training.prefetch_mb`` of them; the step gets them as ``DeviceBatches``,
moved to the device one micro-batch at a time. With packing a step is the packed micro-batches
(`PackedMeta`, any number, none included) up to its `StepEnd`.
"""

from __future__ import annotations

import math
import queue as local_queue
import threading
import time
from dataclasses import asdict, dataclass

import torch

from longdraft.config import Config
from longdraft.pipeline.records import EndOfHeldOut, EndOfRun, PackedMeta, SampleMeta, StepEnd
from longdraft.sharding.batch import ShardBatch
from longdraft.sharding.byte_queue import ByteBoundedQueue
from longdraft.sharding.device_batches import DeviceBatches, batch_bytes, to_host
from longdraft.sharding.header import ShardMismatchError
from longdraft.sharding.layout import ShardGrid
from longdraft.sharding.packing import pack_loss_masks
from longdraft.sharding.reader import read_shard, should_skip
from longdraft.train.batch_source import SKIP_TOO_FEW_LOSS_TOKENS, StepBatches


@dataclass
class ReadCounters:
    """What a rank read from the store; ``full_sample_bytes`` and ``sample_rows`` are what the whole
    samples would have cost, so the report shows each rank reading only its share."""

    samples_read: int = 0
    samples_skipped: int = 0
    bytes_read: int = 0
    full_sample_bytes: int = 0
    rows_read: int = 0
    sample_rows: int = 0
    keys_deleted: int = 0


class ShardSource:
    def __init__(
        self,
        cfg: Config,
        rank: int,
        sp_rank: int,
        queue,
        controller,
        store,
        device: torch.device,
        start_position: int,
    ):
        self.cfg, self.rank, self.sp_rank = cfg, rank, sp_rank
        self.queue, self.controller, self.store, self.device = queue, controller, store, device
        self.position = start_position  # the controller's stream starts here
        self._epoch = 0
        self._counts = ReadCounters()  # written by the prefetch thread only
        self.grid = ShardGrid.from_training(cfg.training)
        self.timeout_s = cfg.cluster.data_timeout_s
        self._prefetched = ByteBoundedQueue(int(cfg.training.prefetch_mb * (1 << 20)))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the BatchSource interface ---------------------------------------------------------------
    def resume_at(self, stream_position: int) -> None:
        if stream_position != self.position:
            raise RuntimeError(
                f"trainer rank {self.rank}: the checkpoint continues the stream at row {stream_position} "
                f"but the controller's stream starts at row {self.position}"
            )

    @property
    def stream_position(self) -> int:
        return self.position

    @property
    def epoch(self) -> int:
        return self._epoch

    def eval_batches(self) -> DeviceBatches:
        if not self.cfg.evaluates_during_training:
            return DeviceBatches([], self.device)
        batches = []
        while not isinstance(item := self._from_queue(), EndOfHeldOut):
            batches.append(self._load(item, pin=False)[1])  # tens of GB at long lengths: pageable
        return DeviceBatches([b for b in batches if b is not None], self.device)

    def next_step(self) -> StepBatches:
        if self._thread is None:
            self._thread = threading.Thread(target=self._prefetch, daemon=True)
            self._thread.start()
        start = time.perf_counter()
        if self.cfg.training.tokens_per_micro_batch is not None:
            return self._packed_step(start)
        items = [self._next() for _ in range(self.cfg.accumulation_steps)]
        for item in items:
            if isinstance(item, EndOfRun):
                raise RuntimeError(f"trainer rank {self.rank}: the stream ended before training.num_steps")
        wait = time.perf_counter() - start
        batches = [b for _, b in items if b is not None]
        skipped = [m.seq for m, b in items if b is None]
        if self.sp_rank == 0:  # one report per DP replica
            self.controller.mark.remote([m.seq for m, b in items if b is not None], "trained")
            if skipped:
                self.controller.mark.remote(skipped, f"skipped:{SKIP_TOO_FEW_LOSS_TOKENS}")
        self.position, self._epoch = items[-1][0].stream_position, items[-1][0].epoch  # the same for the whole batch
        return StepBatches(DeviceBatches(batches, self.device), len(batches), len(skipped), wait)

    def _packed_step(self, start: float) -> StepBatches:
        """This replica's packed micro-batches up to the step's end; the controller skipped the
        samples with too few loss tokens before packing (it counts them in replica 0's `StepEnd`)."""
        items = []
        while not isinstance(item := self._next(), StepEnd):
            if isinstance(item, EndOfRun):
                raise RuntimeError(f"trainer rank {self.rank}: the stream ended before training.num_steps")
            items.append(item)
        wait = time.perf_counter() - start
        seqs = [seq for meta, _ in items for seq in meta.seqs]
        if self.sp_rank == 0 and seqs:
            self.controller.mark.remote(seqs, "trained")
        self.position, self._epoch = item.stream_position, item.epoch
        return StepBatches(DeviceBatches([b for _, b in items], self.device), len(seqs), item.skipped, wait)

    def counters(self) -> dict[str, int]:
        """The rank's read counters, for its report (read them after the last step)."""
        return asdict(self._counts)

    def finish(self) -> None:
        end = self._next()
        self._stop.set()
        if not isinstance(end, EndOfRun):
            raise RuntimeError(f"trainer rank {self.rank}: more samples than steps arrived (sample {end[0].seq})")

    # -- reading ---------------------------------------------------------------------------------
    def _from_queue(self):
        from ray.util.queue import Empty

        try:
            return self.queue.get(block=True, timeout=self.timeout_s)
        except Empty:
            raise TimeoutError(
                f"trainer rank {self.rank}: no sample arrived on its queue within {self.timeout_s:.0f} s "
                "(cluster.data_timeout_s): are the producers alive?"
            ) from None

    def _prefetch(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._from_queue()
                if isinstance(item, EndOfRun):
                    self._prefetched.put(item, 0)
                    return
                if isinstance(item, StepEnd):
                    self._prefetched.put(item, 0)
                    continue
                meta, batch = self._load(item)
                if not self._prefetched.put((meta, batch), 0 if batch is None else batch_bytes(batch), self._stop):
                    return
        except BaseException as exc:  # handed to the main thread, which raises it
            self._prefetched.put(exc, 0)

    def _next(self):
        try:
            item = self._prefetched.get(self.timeout_s)
        except local_queue.Empty:
            raise TimeoutError(
                f"trainer rank {self.rank}: its prefetch thread delivered nothing within "
                f"{self.timeout_s:.0f} s (cluster.data_timeout_s)"
            ) from None
        if isinstance(item, BaseException):
            raise RuntimeError(
                f"trainer rank {self.rank}: data loading failed: {type(item).__name__}: {item}"
            ) from item
        return item

    def _load(self, meta: SampleMeta | PackedMeta, pin: bool = True) -> tuple[SampleMeta, ShardBatch | None]:
        packed = isinstance(meta, PackedMeta)
        expected = self.grid.for_documents(meta.layout.doc_lengths) if packed else self.grid.for_length(meta.length)
        if meta.layout != expected:
            name = meta.sample_ids if packed else meta.sample_id
            raise ShardMismatchError(f"sample {name}: written as {meta.layout}, but this rank trains {expected}")
        shard = self.store.get_shard(meta.handle, self.sp_rank, delete=True)
        n = self._counts
        n.samples_read += 1
        n.keys_deleted += 1
        n.bytes_read += sum(t.numel() * t.element_size() for t in shard.values())
        n.full_sample_bytes += sum(
            math.prod(shape) * getattr(torch, meta.dtypes[name]).itemsize for name, shape in meta.shapes.items()
        )
        n.rows_read += int(shard["input_ids"].shape[0])
        n.sample_rows += meta.length
        if packed:
            mask = pack_loss_masks(meta.packed_loss_masks, meta.layout.doc_lengths)
            batch = read_shard(shard, meta.layout, self.sp_rank, mask, key=f"{meta.key}_usp{self.sp_rank}")
            return meta, to_host(batch, self.device if pin else torch.device("cpu"))
        if not meta.held_out and should_skip(meta.packed_loss_mask, self.cfg.training.min_loss_tokens, meta.length):
            n.samples_skipped += 1
            return meta, None  # decided from the GLOBAL mask: every rank of the group skips alike
        batch = read_shard(shard, meta.layout, self.sp_rank, meta.packed_loss_mask, key=f"{meta.key}_usp{self.sp_rank}")
        return meta, to_host(batch, self.device if pin else torch.device("cpu"))
