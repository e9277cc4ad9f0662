"""How many bytes a sample occupies in the store, from the target's config and the shard contract,
so store capacity and the in-flight window are sized (and checked) before anything starts."""

from __future__ import annotations

from dataclasses import dataclass

from longdraft.config import Config
from longdraft.sharding.layout import ShardGrid
from longdraft.train.setup import target_spec

SHARD_OVERHEAD_BYTES = 64 << 10  # header tensor and per-tensor alignment of the store's encoding
MiB = 1 << 20
_DTYPE_BYTES = {"fp32": 4, "bf16": 2}


@dataclass(frozen=True)
class SampleSizes:
    bytes_per_row: int  # input id + aux (3H) + last hidden (H) of one position
    grid: ShardGrid

    def sample_bytes(self, length: int) -> int:
        """All S shards of a sample of ``length`` tokens (look-ahead rows and tail padding included)."""
        return self.grid.for_length(length).sp_size * self.shard_bytes(length)

    def shard_bytes(self, length: int) -> int:
        return self.grid.for_length(length).local_length * self.bytes_per_row + SHARD_OVERHEAD_BYTES


def sample_sizes(cfg: Config) -> SampleSizes:
    spec = target_spec(cfg)
    itemsize = _DTYPE_BYTES.get(cfg.model.target_dtype, spec.torch_dtype.itemsize)  # "auto": the checkpoint's
    return SampleSizes(8 + 4 * spec.hidden_size * itemsize, ShardGrid.from_training(cfg.training))


def mib(n: int) -> int:
    return -(-n // MiB)
