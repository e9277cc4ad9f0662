"""Store sizes follow from the target and the shard contract; a store that cannot hold one sample
is refused before anything starts, naming the size it needs."""

import pytest

from longdraft.config import config_from_dict
from longdraft.pipeline.sizes import SHARD_OVERHEAD_BYTES, sample_sizes
from longdraft.pipeline.stores import StoreCapacityError, mooncake_sizes


def _cfg(target, **mooncake):
    return config_from_dict(
        {
            "data": {"train_path": "x.jsonl"},
            "model": {"target_path": str(target), "target_dtype": "fp32"},
            "training": {
                "max_seq_length": 4096,
                "ttt_length": 7,
                "num_trainers": 2,
                "sp_ulysses_size": 2,
                "batch_size": 8,
            },
            "store": {"backend": "mooncake", "mooncake": mooncake},
            "output": {"dir": "o"},
        }
    )


def test_sample_bytes_follow_the_shard_contract(tiny_target):
    sizes = sample_sizes(_cfg(tiny_target(hidden_size=32)))
    assert sizes.bytes_per_row == 8 + 4 * 32 * 4  # id + aux (3H) + last hidden (H), fp32
    # S = 2 shards of ceil(4096 / 2) queries + 7 look-ahead rows each
    assert sizes.shard_bytes(4096) == (2048 + 7) * sizes.bytes_per_row + SHARD_OVERHEAD_BYTES
    assert sizes.sample_bytes(4096) == 2 * sizes.shard_bytes(4096)


def test_defaults_are_sized_from_the_longest_sample(tiny_target):
    cfg = _cfg(tiny_target(hidden_size=32))
    segment, buffer = mooncake_sizes(cfg, sample_sizes(cfg))
    sample = sample_sizes(cfg).sample_bytes(4096)
    assert buffer << 20 >= sample_sizes(cfg).shard_bytes(4096) and buffer >= 16
    assert 2 * (segment << 20) * 0.9 >= 2 * 8 * sample  # 2 trainers lend room for two global batches
    cfg.store.mooncake.segments_on = "producers"  # one producer lends it all
    assert (mooncake_sizes(cfg, sample_sizes(cfg))[0] << 20) * 0.9 >= 2 * 8 * sample


def test_a_store_too_small_for_one_sample_is_refused_with_the_size_needed(tiny_target):
    target = tiny_target(hidden_size=32)
    cfg = _cfg(target, local_buffer_size_mb=1)
    with pytest.raises(StoreCapacityError, match=r"local_buffer_size_mb = 1 cannot hold one shard .* at least 2$"):
        mooncake_sizes(cfg, sample_sizes(cfg))
    big = _cfg(tiny_target(hidden_size=512), global_segment_size_mb=16, segments_on="producers")
    with pytest.raises(StoreCapacityError, match=r"cannot hold one sample of \d+ bytes .* at least \d+$"):
        mooncake_sizes(big, sample_sizes(big))


def test_keys_left_waits_for_the_master_to_drop_an_unfinished_put():
    """A producer killed mid-put leaves an object the master drops only after its discard timeout."""
    from longdraft.pipeline.stores import StoreService

    class Master:  # stands in for mooncake_master's key count
        def __init__(self, counts):
            self.counts = list(counts)

        def key_count(self):
            return self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]

    service = StoreService.__new__(StoreService)
    service.master = Master([1, 1, 0])
    assert service.keys_left() == 1  # no wait: what is there now
    service.master = Master([1, 1, 0])
    assert service.keys_left(wait_s=10) == 0
    service.master = Master([1])
    assert service.keys_left(wait_s=1.5) == 1  # still there after the wait: reported, not hidden
    service.master = None
    assert service.keys_left(wait_s=10) is None  # the Ray store has no master
