"""The in-flight byte budget: store bytes of samples issued to producers and not yet trained.

A Ray-store shard stays in the object store of the node whose producer put it until a trainer
reads it (`store/ray_store.py`), so each node has a budget of its own: half of that node's object
store (the other half takes the owner's passing second copy and the copies trainers pull), and a
sample's bytes are reserved against its producer's node. ``store.max_inflight_mb`` (or the
Mooncake pool, which is one store over all its lenders) caps the total on top.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from longdraft.config import Config

NODE_SHARE = 0.5  # of a node's object store that in-flight shards may fill


@dataclass
class InflightBudget:
    """``per_node``: node id -> bytes (None: no limit per node); ``total``: bytes over all nodes
    (None: no total limit). ``floor`` samples in flight (one global batch) always fit, anywhere, so
    the trainers never starve. Thread-safe: trainers free bytes while the controller reserves."""

    per_node: dict[str, int] | None = None
    total: int | None = None
    floor: int = 1
    held: dict[int, tuple[str | None, int]] = field(default_factory=dict)  # seq -> (node, bytes)
    peak: int = 0
    peak_by_node: dict[str | None, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __getstate__(self) -> dict:  # the driver hands the budget to the controller's actor
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def reserve(self, need: dict[int, int], node: str | None) -> bool:
        """Take ``need`` (seq -> bytes) against ``node``; False (nothing taken) when it does not fit."""
        with self._lock:
            if len(self.held) >= self.floor and not self._fits(sum(need.values()), node):
                return False
            self.held.update({seq: (node, n) for seq, n in need.items()})
            self._note_peaks()
        return True

    def move(self, seq: int, node: str | None) -> None:
        """The sample's bytes landed on ``node`` (its producer was restarted on another node)."""
        with self._lock:
            if seq in self.held and self.held[seq][0] != node:
                self.held[seq] = (node, self.held[seq][1])
                self._note_peaks()

    def release(self, seqs: list[int]) -> None:
        with self._lock:
            for seq in seqs:
                self.held.pop(seq, None)

    def held_by_node(self) -> dict[str | None, int]:
        with self._lock:
            return self._by_node()

    def summary(self) -> dict:
        with self._lock:
            by_node = self._by_node()
            return {
                "max_inflight_bytes": self.total if self.total is not None else sum((self.per_node or {}).values()),
                "peak_inflight_bytes": self.peak,
                "inflight_by_node": {
                    node: {
                        "budget": (self.per_node or {}).get(node),
                        "peak": self.peak_by_node.get(node, 0),
                        "held": by_node.get(node, 0),
                    }
                    for node in sorted(set(self.per_node or {}) | set(self.peak_by_node), key=str)
                },
            }

    def limit_of(self, node: str | None) -> int | None:
        """A node not known at start (it joined later) gets the smallest node's budget."""
        if self.per_node is None:
            return None
        return self.per_node.get(node, min(self.per_node.values(), default=0))

    def _fits(self, nbytes: int, node: str | None) -> bool:
        by_node = self._by_node()
        if self.total is not None and sum(by_node.values()) + nbytes > self.total:
            return False
        limit = self.limit_of(node)
        return limit is None or by_node.get(node, 0) + nbytes <= limit

    def _by_node(self) -> dict[str | None, int]:
        out: dict[str | None, int] = {}
        for node, n in self.held.values():
            out[node] = out.get(node, 0) + n
        return out

    def _note_peaks(self) -> None:
        by_node = self._by_node()
        self.peak = max(self.peak, sum(by_node.values()))
        for node, n in by_node.items():
            self.peak_by_node[node] = max(self.peak_by_node.get(node, 0), n)


def nodes_of(actors: list) -> list[str | None]:
    """The node each actor runs on; None for one that does not answer (it died starting): its first
    samples name their node (`SampleHandle.node`)."""
    import ray

    futures = [a.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()) for a in actors]
    nodes: list[str | None] = []
    for future in futures:
        try:
            nodes.append(ray.get(future))
        except ray.exceptions.RayError:
            nodes.append(None)
    return nodes


def node_store_budgets() -> dict[str, int]:
    """Node id -> ``NODE_SHARE`` of that node's object store, for every alive node of the cluster."""
    import ray

    return {
        node["NodeID"]: int(node["Resources"].get("object_store_memory", 1 << 30) * NODE_SHARE)
        for node in ray.nodes()
        if node.get("Alive")
    }


def inflight_budget(cfg: Config, capacity_bytes: int | None) -> InflightBudget:
    """The run's budget: per node for the Ray store, one total for Mooncake (``capacity_bytes``, the
    pool); ``store.max_inflight_mb`` caps the total of either."""
    total = cfg.store.max_inflight_mb << 20 if cfg.store.max_inflight_mb is not None else None
    per_node = node_store_budgets() if cfg.store.backend == "ray" else None
    if per_node is None and total is None:
        total = capacity_bytes
    return InflightBudget(per_node=per_node, total=total, floor=cfg.training.batch_size)
