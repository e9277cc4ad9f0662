"""Controller: metadata only. Feeds prompts to producers, fans samples out to trainer queues.

It never touches tensors: producers return `SampleMeta` records (store handles, shapes, packed
loss masks), and the controller puts one per SP rank into the queues of the DP replica that owns
the sample. Every sample is tracked from prompt to trained, so the summary can prove none was lost.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from longdraft.pipeline.records import EndOfHeldOut, EndOfRun, PromptItem, SampleMeta


_STAGE = {"new": 0, "prefilling": 1, "produced": 2, "dispatched": 3, "trained": 4, "skipped": 4}


def replica_of(seq: int, batch_size: int, dp_size: int) -> int:
    """Round-robin over DP replicas within each optimizer step's global batch."""
    return (seq % batch_size) % dp_size


class Controller:
    """``held_out`` (None: the run does not evaluate) is produced and dispatched first, followed by
    ``EndOfHeldOut`` in every queue; held-out sample ``i`` goes to DP replica ``i % dp``."""

    def __init__(self, prompts: list[PromptItem], producers: list, queues: list[list], batch_size: int,
                 pool_size: int, producer_batch: int, held_out: list[PromptItem] | None = None):
        self.prompts = prompts
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

    def run(self) -> dict:
        """Feed producers (bounded pool) and dispatch in stream order; ends every queue with EndOfRun."""
        import ray

        held_out = self.held_out or []
        stream = [*held_out, *self.prompts]  # dispatched in this order
        pending: dict = {}  # future -> (producer index, first stream index of the batch)
        ready: dict[int, SampleMeta] = {}  # stream index -> produced sample
        next_prompt, next_dispatch = 0, 0
        idle = list(range(len(self.producers)))
        while next_dispatch < len(stream):
            in_pool = (next_prompt - next_dispatch)
            while idle and next_prompt < len(stream) and in_pool < self.pool_size:
                items = stream[next_prompt : next_prompt + min(self.producer_batch, self.pool_size - in_pool)]
                p = idle.pop(0)
                pending[self.producers[p].produce.remote(items)] = (p, next_prompt)
                for item in items:
                    if not item.held_out:
                        self._set(item.seq, "prefilling")
                next_prompt += len(items)
                in_pool = next_prompt - next_dispatch
            if not pending and next_dispatch not in ready:
                raise RuntimeError(f"sample {next_dispatch} was never sent to a producer (controller bug)")
            if next_dispatch not in ready:
                done, _ = ray.wait(list(pending), num_returns=1)
                for future in done:
                    p, first = pending.pop(future)
                    idle.append(p)
                    for offset, meta in enumerate(ray.get(future)):  # a producer error propagates, stopping the run
                        ready[first + offset] = meta
                        if not meta.held_out:
                            self._set(meta.seq, "produced")
            while next_dispatch in ready:
                if next_dispatch == len(held_out):
                    self._end_held_out()
                self._dispatch(ready.pop(next_dispatch))
                next_dispatch += 1
        if len(stream) == len(held_out):
            self._end_held_out()
        self._put_everywhere(EndOfRun())
        return self.summary()

    def _end_held_out(self) -> None:
        if self.held_out is not None:
            self._put_everywhere(EndOfHeldOut())

    def _put_everywhere(self, item) -> None:
        for replica in self.queues:
            for queue in replica:
                queue.put(item)

    def _dispatch(self, meta: SampleMeta) -> None:
        if meta.held_out:
            replica = self.queues[meta.seq % len(self.queues)]
        else:
            replica = self.queues[replica_of(meta.seq, self.batch_size, len(self.queues))]
            self._set(meta.seq, "dispatched")  # before the puts: a trainer may report it trained right away
        start = time.perf_counter()
        for r, queue in enumerate(replica):
            queue.put(meta.for_rank(r))  # blocks while the trainers are behind: backpressure
        self.dispatch_wait_s += time.perf_counter() - start

    def mark(self, seqs: list[int], outcome: str) -> None:
        """Called by SP rank 0 of a replica: ``trained`` or ``skipped:<reason>``."""
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
            "prompts": len(self.prompts), "held_out": len(self.held_out or []), "produced": produced, "trained": trained, "skipped": skipped,
            "skipped_by_reason": dict(self.skip_reasons), "lost": len(self.prompts) - trained - skipped,
            "dispatch_wait_s": self.dispatch_wait_s,
        }
