"""A thread-safe FIFO bounded by the bytes it holds, not by its length.

``put`` waits while the queue is not empty and the item would take it past the budget, so the queue
never holds more than the budget, or one item when a single item is larger (a reader always makes
progress, whatever the budget).
"""

from __future__ import annotations

import collections
import queue
import threading
import time


class ByteBoundedQueue:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._items: collections.deque = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.peak_bytes = 0  # the most it ever held (the byte-bound test reads it)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, item, nbytes: int, stop: threading.Event | None = None) -> bool:
        """Append ``item`` of ``nbytes``; waits for room. False when ``stop`` was set while waiting."""
        with self._cond:
            while self._items and self._bytes + nbytes > self.budget:
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(timeout=0.5)
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            self._cond.notify_all()
        return True

    def get(self, timeout: float):
        """The oldest item; ``queue.Empty`` after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise queue.Empty
                self._cond.wait(timeout=left)
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._cond.notify_all()
            return item
