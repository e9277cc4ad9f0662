"""Controller: metadata only. Feeds prompts to producers, fans samples out to trainer queues.

It never touches tensors: producers return `SampleMeta` records (store handles, shapes, packed
loss masks), and the controller puts one per SP rank into the queues of the DP replica that owns
the sample. Every sample is tracked from prompt to trained, so the summary can prove none was lost.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from longdraft.pipeline.records import EndOfRun, PromptItem, SampleMeta


_STAGE = {"new": 0, "prefilling": 1, "produced": 2, "dispatched": 3, "trained": 4, "skipped": 4}


def replica_of(seq: int, batch_size: int, dp_size: int) -> int:
    """Round-robin over DP replicas within each optimizer step's global batch."""
    return (seq % batch_size) % dp_size


class Controller:
    def __init__(self, prompts: list[PromptItem], producers: list, queues: list[list], batch_size: int,
                 pool_size: int, producer_batch: int):
        self.prompts = prompts
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

        pending: dict = {}  # future -> producer index
        ready: dict[int, SampleMeta] = {}
        next_prompt, next_dispatch = 0, 0
        idle = list(range(len(self.producers)))
        while next_dispatch < len(self.prompts):
            in_pool = (next_prompt - next_dispatch)
            while idle and next_prompt < len(self.prompts) and in_pool < self.pool_size:
                items = self.prompts[next_prompt : next_prompt + min(self.producer_batch, self.pool_size - in_pool)]
                p = idle.pop(0)
                pending[self.producers[p].produce.remote(items)] = p
                for item in items:
                    self._set(item.seq, "prefilling")
                next_prompt += len(items)
                in_pool = next_prompt - next_dispatch
            if not pending and next_dispatch not in ready:
                raise RuntimeError(f"sample {next_dispatch} was never sent to a producer (controller bug)")
            if next_dispatch not in ready:
                done, _ = ray.wait(list(pending), num_returns=1)
                for future in done:
                    idle.append(pending.pop(future))
                    for meta in ray.get(future):  # a producer error propagates and stops the run
                        ready[meta.seq] = meta
                        self._set(meta.seq, "produced")
            while next_dispatch in ready:
                self._dispatch(ready.pop(next_dispatch))
                next_dispatch += 1
        for replica in self.queues:
            for queue in replica:
                queue.put(EndOfRun())
        return self.summary()

    def _dispatch(self, meta: SampleMeta) -> None:
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
            "prompts": len(self.prompts), "produced": produced, "trained": trained, "skipped": skipped,
            "skipped_by_reason": dict(self.skip_reasons), "lost": len(self.prompts) - trained - skipped,
            "dispatch_wait_s": self.dispatch_wait_s,
        }
