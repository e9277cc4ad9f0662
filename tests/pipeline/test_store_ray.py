"""Ray object-store tensor store: put/get/delete round trip across real Ray actors."""

import time

import pytest
import ray  # noqa: E402
import torch

from longdraft.sharding.header import check_shard
from longdraft.sharding.layout import ShardLayout
from longdraft.sharding.split import split_sample
from longdraft.store.base import SampleHandle, StoreError, shard_nbytes
from longdraft.store.ray_store import RayTensorStore
from tests.object_store_usage import local_object_store_usage
from tests.sample_tensors import make_sample


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(bits(a[k]), bits(b[k])) for k in a
    )


@ray.remote(num_cpus=0)
class ShardReader:
    """A trainer rank's view: its own store client, its own narrowed handle."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.store = RayTensorStore()

    def read(self, handle: SampleHandle, r: int, layout: ShardLayout) -> dict[str, torch.Tensor]:
        shard = self.store.get_shard(handle, r)
        check_shard(shard, layout, r, key=f"{handle.key}_usp{r}")
        assert not self.store.exists(handle, r)
        return shard

    def read_other(self, handle: SampleHandle, r: int) -> str:
        try:
            self.store.get_shard(handle, r)
        except StoreError as e:
            return str(e)
        return "read succeeded"

    def stats(self) -> dict[str, int]:
        return self.store.stats()


def wait_for_store_usage(target: int, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        count = local_object_store_usage()[0]
        if count <= target or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_round_trip_each_rank_reads_only_its_shard(ray_session) -> None:
    baseline = wait_for_store_usage(0, timeout_s=3.0)
    readers = [ShardReader.remote() for _ in range(2)]
    writer = RayTensorStore()
    total_bytes = 0
    for i, (dtype, order) in enumerate([(torch.float32, "contiguous"), (torch.bfloat16, "zigzag")]):
        layout = ShardLayout(13, 2, 2, 3, order)  # S=4, L not divisible by S
        shards = split_sample(make_sample(layout.length, 8, dtype, seed=i), layout)
        handle = writer.put_sample(f"sample{i}", shards)
        assert handle.shard_nbytes == tuple(shard_nbytes(s) for s in shards)
        total_bytes += sum(handle.shard_nbytes)
        assert local_object_store_usage()[0] >= baseline + layout.sp_size

        got = ray.get([readers[r % 2].read.remote(handle.for_rank(r), r, layout) for r in range(layout.sp_size)])
        for r, shard in enumerate(got):
            assert same_bits(shard, shards[r]), f"{dtype} shard {r} differs after the round trip"
        # a rank's narrowed handle reaches no other rank's shard
        msg = ray.get(readers[0].read_other.remote(handle.for_rank(0), 1))
        assert "holds no reference" in msg and "sample" + str(i) in msg
        del handle, got

    stats = writer.stats()
    assert stats["keys_put"] == 8 and stats["bytes_put"] == total_bytes
    reader_stats = ray.get([rd.stats.remote() for rd in readers])
    assert sum(s["keys_read"] for s in reader_stats) == 8
    assert sum(s["keys_deleted"] for s in reader_stats) == 8
    assert sum(s["bytes_read"] for s in reader_stats) == total_bytes
    # every reference dropped: the object store is back to where it started
    assert wait_for_store_usage(baseline) == baseline
    for rd in readers:
        ray.kill(rd)


@pytest.mark.timeout(60)
def test_delete_without_read_and_clear_errors(ray_session) -> None:
    store = RayTensorStore()
    layout = ShardLayout(5, 4, 1, 2)  # rank 3 is all padding but still stored
    shards = split_sample(make_sample(5, 4, torch.bfloat16), layout)
    handle = store.put_sample("skipped", shards)
    kept = store.get_shard(handle, 3, delete=False)
    assert not kept["aux_hidden"].any() and store.exists(handle, 3)
    for r in range(4):
        store.delete(handle, r)  # a skipped sample: released without reading
        store.delete(handle, r)  # idempotent
        assert not store.exists(handle, r)
    assert store.stats()["keys_alive"] == 0 and store.stats()["keys_deleted"] == 4
    with pytest.raises(StoreError, match="'skipped' shard 0.*already read and deleted"):
        store.get_shard(handle, 0)
    with pytest.raises(StoreError, match="shard 4 is outside \\[0, 4\\)"):
        store.delete(handle, 4)
    with pytest.raises(StoreError, match="needs the SampleHandle"):
        store.get_shard("skipped", 0)
