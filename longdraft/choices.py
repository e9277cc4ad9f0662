"""The named choices a run makes, as ``Literal`` types defined once: the config's fields, the shard
contract, the attention factory and the benchmarks all name them from here. Pure (no torch import),
so the config imports it at no cost."""

from __future__ import annotations

from typing import Literal, get_args

# The order in which a sequence's positions are dealt to the SP ranks (sharding/layout.py).
ShardOrder = Literal["contiguous", "zigzag"]
SHARD_ORDERS: tuple[ShardOrder, ...] = get_args(ShardOrder)

# How ring attention exchanges the step-0 K/V (attention/usp.py); ``auto`` is resolved once per run.
RingMode = Literal["auto", "gather", "ring"]
RING_MODES: tuple[RingMode, ...] = get_args(RingMode)

AttentionBackendName = Literal["auto", "fast", "reference", "usp"]
ATTENTION_BACKENDS: tuple[AttentionBackendName, ...] = get_args(AttentionBackendName)
