"""Controller: metadata only. Feeds prompts to producers, fans samples out to trainer queues.

It never touches tensors: producers return `SampleMeta` records (store handles, shapes, packed
loss masks), and the controller puts one per SP rank into the queues of the DP replica that owns
the sample. With ``training.tokens_per_micro_batch`` the units are packed micro-batches instead
(`pipeline/packed_steps.py`), and a `StepEnd` in every queue ends each step. Every sample is
tracked from prompt to trained, so the summary can prove none was lost.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

from longdraft.pipeline.inflight import nodes_of
from longdraft.pipeline.packed_steps import UnitFeed
from longdraft.pipeline.records import (
    EndOfHeldOut,
    EndOfRun,
    PackedGroup,
    PackedMeta,
    PromptItem,
    SampleMeta,
    StepEnd,
    seqs_of,
)
from longdraft.sharding.layout import ShardGrid
from longdraft.train.batch_source import SKIP_TOO_FEW_LOSS_TOKENS

if TYPE_CHECKING:
    from longdraft.pipeline.inflight import InflightBudget
    from longdraft.pipeline.prompt_feed import FeedSpec

RESTART_WAIT_S = 600.0  # how long a restarting producer may keep refusing calls

_STAGE = {"new": 0, "prefilling": 1, "produced": 2, "dispatched": 3, "trained": 4, "skipped": 4}


def replica_of(seq: int, batch_size: int, dp_size: int) -> int:
    """Round-robin over DP replicas within each optimizer step's global batch."""
    return (seq % batch_size) % dp_size


class Controller:
    """``held_out`` (None: the run does not evaluate) is produced and dispatched first, followed by
    ``EndOfHeldOut`` in every queue; held-out sample ``i`` goes to DP replica ``i % dp``."""

    def __init__(
        self,
        feed: FeedSpec,
        producers: list,
        queues: list[list],
        batch_size: int,
        pool_size: int,
        producer_batch: int,
        held_out: list[PromptItem] | None = None,
        budget: InflightBudget | None = None,
        sizes=None,
    ):
        from longdraft.pipeline.prompt_feed import PromptFeed

        self.feed = PromptFeed(feed)  # the stream is read here, in the controller's process
        self.held_out = held_out
        self.producers = producers
        self.queues = queues  # [dp][sp_rank] -> ray.util.queue.Queue
        self.batch_size = batch_size
        self.pool_size = max(pool_size, producer_batch)
        self.producer_batch = producer_batch
        self.status: dict[int, str] = {}
        self.skip_reasons: Counter = Counter()
        self._lock = threading.Lock()
        self.dispatch_wait_s = 0.0
        self.producer_failures, self.reissued = 0, 0
        self._restarting_since: dict[int, float] = {}  # producer -> when its calls began to bounce
        self.max_producer_failures = 3 * max(1, len(producers))
        self.dispatched: Counter = Counter()  # train seq -> times dispatched (must end at 1 each)
        self.heartbeats: dict[int, tuple[int, float]] = {}  # trainer rank -> (last finished step, when)
        # Backpressure by bytes: samples issued to producers and not yet trained hold their store bytes,
        # against the node of the producer that writes them (pipeline/inflight.py).
        self.budget, self.sizes = budget, sizes
        self.producer_nodes: list[str | None] = [None] * len(producers)
        self.budget_waits = 0
        t = feed.cfg.training
        self.units = UnitFeed(
            self.feed,
            held_out or [],
            t.tokens_per_micro_batch,
            len(queues),
            t.min_loss_tokens,
            self._skipped,
            ShardGrid.from_training(t),
        )

    def run(self) -> dict:
        """Feed producers (bounded pool) and dispatch in stream order; ends every queue with EndOfRun."""
        import ray

        held_out = self.held_out or []
        # Units, indexed in dispatch order: held-out prompts first, then the training stream (prompts,
        # or packed micro-batches and step ends).
        pending: dict = {}  # future -> (producer index, first unit index of the batch, the batch)
        ready: dict[int, SampleMeta] = {}  # unit index -> produced unit
        retry: list[tuple[int, list[PromptItem]]] = []  # batches whose producer died before answering
        next_prompt, next_dispatch = 0, 0
        staged: list[PromptItem] = []  # drawn, waiting for room in the in-flight byte budget
        idle = list(range(len(self.producers)))
        if self.budget is not None and self.budget.per_node is not None:
            self.producer_nodes = nodes_of(self.producers)  # a per-node budget needs them before any batch
        more = lambda: staged or not self.units.exhausted  # noqa: E731
        while next_dispatch < next_prompt or more():
            while idle and (retry or (more() and next_prompt - next_dispatch < self.pool_size)):
                if retry:  # already reserved; moved to the node that writes it once it is back
                    p, (first, items) = idle[0], retry.pop(0)
                else:
                    count = min(self.producer_batch, self.pool_size - (next_prompt - next_dispatch))
                    staged = staged or self.units.take(count)
                    if staged and isinstance(staged[0], StepEnd):  # needs no producer
                        ready[next_prompt], staged = staged[0], []
                        next_prompt += 1
                        continue
                    p = self._reserve(staged, idle)
                    if p is None:
                        break
                    first, items, staged = next_prompt, staged, []
                    next_prompt += len(items)
                idle.remove(p)
                pending[self.producers[p].produce.remote(items)] = (p, first, items)
                for item in items:
                    for seq in seqs_of(item):
                        self._set(seq, "prefilling")
            if not pending and next_dispatch not in ready:
                if staged:  # the budget is full: trainers free it as they report steps
                    self.budget_waits += 1
                    time.sleep(0.02)
                    continue
                raise RuntimeError(f"sample {next_dispatch} was never sent to a producer (controller bug)")
            if next_dispatch not in ready:
                done, _ = ray.wait(list(pending), num_returns=1)
                for future in done:
                    p, first, items = pending.pop(future)
                    idle.append(p)  # a dead producer is restarted by Ray and takes calls again
                    metas = self._produced(future, p, first, items, retry)
                    self._landed(p, metas)
                    for offset, meta in enumerate(metas):
                        ready[first + offset] = meta
                        for seq in seqs_of(meta):
                            self._set(seq, "produced")
            while next_dispatch in ready:
                if next_dispatch == len(held_out):
                    self._end_held_out()
                self._dispatch(ready.pop(next_dispatch))
                next_dispatch += 1
        if next_prompt == len(held_out):
            self._end_held_out()
        self._put_everywhere(EndOfRun())
        return self.summary()

    def _reserve(self, items: list[PromptItem], idle: list[int]) -> int | None:
        """The first idle producer whose node's budget takes the store bytes of ``items`` (taken
        there), or None (nothing taken): a full node holds its producers back, the others go on."""
        if self.budget is None or self.sizes is None:
            return idle[0]
        need = {}
        for item in items:
            if isinstance(item, PackedGroup):  # its bytes spread over its samples, which trainers free
                lengths = [len(i.input_ids) for i in item.items]
                total = self.sizes.packed_bytes(lengths)
                need.update({seq: total // len(lengths) for seq in item.seqs})
                need[item.seqs[0]] += total % len(lengths)
            elif not item.held_out:
                need[item.seq] = self.sizes.sample_bytes(len(item.input_ids))
        return next((p for p in idle if self.budget.reserve(need, self.producer_nodes[p])), None)

    def _landed(self, producer: int, metas: list[SampleMeta]) -> None:
        """Samples are in the store of the node their handle names: after a restart on another
        node, their reserved bytes move there, and so do the producer's next ones."""
        for meta in metas:
            node = getattr(meta.handle, "node", None)
            if node is not None and self.budget is not None:
                self.producer_nodes[producer] = node
                for seq in seqs_of(meta):
                    self.budget.move(seq, node)

    def _skipped(self, seqs: list[int]) -> None:
        """Packing left these samples out (too few loss tokens): skipped as a trainer would have."""
        self.mark(seqs, f"skipped:{SKIP_TOO_FEW_LOSS_TOKENS}")

    def _produced(self, future, producer: int, first: int, items: list[PromptItem], retry: list) -> list[SampleMeta]:
        """The batch's samples; when the producer's process died, the batch goes again (to the next
        free producer, possibly the restarted one). A producer's own error stops the run."""
        import ray

        try:
            metas = ray.get(future)
            self._restarting_since.pop(producer, None)
            return metas
        except ray.exceptions.ActorUnavailableError as exc:  # restarting: try again soon, not a new death
            since = self._restarting_since.setdefault(producer, time.monotonic())
            if time.monotonic() - since > RESTART_WAIT_S:
                raise RuntimeError(f"producer {producer} did not come back within {RESTART_WAIT_S:.0f} s") from exc
            time.sleep(0.2)
        except ray.exceptions.RayActorError as exc:
            self.producer_failures += 1
            if self.producer_failures > self.max_producer_failures:
                raise RuntimeError(
                    f"producers died {self.producer_failures} times (last: producer {producer}, "
                    f"{type(exc).__name__}); giving up"
                ) from exc
        # The batch goes again under new store keys (a half-finished attempt may have written some).
        self.reissued += sum(len(seqs_of(item)) or 1 for item in items)  # samples (a packed group holds several)
        retry.append((first, [replace(item, attempt=item.attempt + 1) for item in items]))
        return []

    def _end_held_out(self) -> None:
        if self.held_out is not None:
            self._put_everywhere(EndOfHeldOut())

    def _put_everywhere(self, item) -> None:
        for replica in self.queues:
            for queue in replica:
                queue.put(item)

    def _dispatch(self, meta) -> None:
        if isinstance(meta, StepEnd):  # every replica learns where the step ends; replica 0 counts the skips
            for d, replica in enumerate(self.queues):
                for queue in replica:
                    queue.put(meta if d == 0 else replace(meta, skipped=0))
            return
        if meta.held_out:
            replica = self.queues[meta.seq % len(self.queues)]
        else:
            d = (
                meta.replica
                if isinstance(meta, PackedMeta)
                else replica_of(meta.seq, self.batch_size, len(self.queues))
            )
            replica = self.queues[d]
            for seq in seqs_of(meta):
                self.dispatched[seq] += 1
                self._set(seq, "dispatched")  # before the puts: a trainer may report it trained right away
        start = time.perf_counter()
        for r, queue in enumerate(replica):
            queue.put(meta.for_rank(r))  # blocks while the trainers are behind: backpressure
        self.dispatch_wait_s += time.perf_counter() - start

    def heartbeat(self, rank: int, step: int) -> None:
        """A trainer rank finished ``step``; the driver reads these to name a rank that stalls."""
        with self._lock:
            self.heartbeats[rank] = (step, time.monotonic())

    def progress(self) -> dict[int, tuple[int, float]]:
        """Per rank: (last finished step, seconds since)."""
        now = time.monotonic()
        with self._lock:
            return {rank: (step, now - at) for rank, (step, at) in self.heartbeats.items()}

    def mark(self, seqs: list[int], outcome: str) -> None:
        """Called by SP rank 0 of a replica: ``trained`` or ``skipped:<reason>``."""
        if self.budget is not None:
            self.budget.release(seqs)
        for seq in seqs:
            self._set(seq, outcome)
            if outcome.startswith("skipped:"):
                with self._lock:
                    self.skip_reasons[outcome.split(":", 1)[1]] += 1

    def _set(self, seq: int, state: str) -> None:
        """States only move forward (reports arrive concurrently with dispatching)."""
        with self._lock:
            if _STAGE[state.split(":")[0]] > _STAGE[self.status.get(seq, "new").split(":")[0]]:
                self.status[seq] = state

    def summary(self) -> dict:
        with self._lock:
            states = Counter(self.status.values())
        trained = states.get("trained", 0)
        skipped = sum(n for s, n in states.items() if s.startswith("skipped:"))
        produced = trained + skipped + states.get("dispatched", 0) + states.get("produced", 0)
        return {
            "prompts": self.feed.total,
            "held_out": len(self.held_out or []),
            "produced": produced,
            "trained": trained,
            "skipped": skipped,
            "skipped_by_reason": dict(self.skip_reasons),
            "lost": self.feed.total - trained - skipped,
            "stream": self.feed.stream.report.summary(),
            "bad_rows": dict(self.feed.stream.report.skipped),
            "duplicated": sum(n - 1 for n in self.dispatched.values() if n > 1),
            "producer_failures": self.producer_failures,
            "reissued": self.reissued,
            **(self.budget.summary() if self.budget is not None else {}),
            **self.units.packing_summary(),
            "budget_waits": self.budget_waits,
            "dispatch_wait_s": self.dispatch_wait_s,
        }
