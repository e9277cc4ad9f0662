"""Mooncake tensor store against a real local mooncake_master (TCP over 127.0.0.1)."""

import multiprocessing as mp
import pickle
import threading
import time

import mooncake.store  # noqa: F401,E402  (a broken install must fail, not skip)
import pytest
import torch

from longdraft.sharding.header import check_shard
from longdraft.sharding.layout import ShardLayout
from longdraft.sharding.split import split_sample  # noqa: E402
from longdraft.store.base import StoreError, shard_nbytes  # noqa: E402
from longdraft.store.mooncake_master import MooncakeMaster, free_port, port_open  # noqa: E402
from longdraft.store.mooncake_store import MooncakeStoreOptions, MooncakeTensorStore  # noqa: E402
from tests.sample_tensors import make_sample

MiB = 1024 * 1024


def options(address: str, **kw) -> MooncakeStoreOptions:
    base = dict(global_segment_size=16 * MiB, local_buffer_size=16 * MiB, put_retries=3, retry_backoff_s=0.02)
    base.update(kw)
    return MooncakeStoreOptions(master_address=address, **base)


@pytest.fixture(scope="module")
def master():
    with MooncakeMaster() as m:
        yield m


@pytest.fixture(scope="module")
def store(master):
    with MooncakeTensorStore(options(master.address)) as s:
        yield s


@pytest.fixture(autouse=True)
def no_keys_left_behind(request):
    yield
    if "master" in request.fixturenames:
        master = request.getfixturevalue("master")
        assert master.key_count() == 0, "a test left Mooncake objects behind"


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and torch.equal(a[k].contiguous().view(torch.uint8), b[k].contiguous().view(torch.uint8))
        for k in a
    )


def read_in_other_process(address: str, keys: list[str], r: int, out: "mp.Queue") -> None:
    """A trainer rank in its own process: a client that lends no memory, reads its shards."""
    torch.set_num_threads(1)
    with MooncakeTensorStore(options(address, global_segment_size=0)) as s:
        shards = [s.get_shard(key, r) for key in keys]
        # plain pickle: torch's queue reducer would pass shared-memory fds that die with this process
        out.put(pickle.dumps((shards, s.stats(), [s.exists(key, r) for key in keys])))


@pytest.mark.timeout(60)
def test_master_start_stop() -> None:
    m = MooncakeMaster().start()
    try:
        assert m.running and port_open("127.0.0.1", m.rpc_port) and m.key_count() == 0
    finally:
        m.stop()
    assert not m.running and not port_open("127.0.0.1", m.rpc_port)


@pytest.mark.timeout(30)
def test_unreachable_master_is_named() -> None:
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        MooncakeTensorStore(options(address, connect_timeout_s=0.5))
    assert time.monotonic() - t0 < 5
    assert address in str(err.value) and "mooncake_master --rpc_address" in str(err.value)


@pytest.mark.timeout(60)
def test_round_trip_bit_exact(master, store) -> None:
    cases = [
        (torch.float32, ShardLayout(13, 2, 2, 3, "contiguous")),  # S=4, L not divisible by S
        (torch.bfloat16, ShardLayout(13, 2, 2, 3, "zigzag")),
    ]
    keys = [f"rt_{layout.order}" for _, layout in cases]
    samples = [
        split_sample(make_sample(layout.length, 8, dtype, seed=i), layout) for i, (dtype, layout) in enumerate(cases)
    ]
    before = store.stats()
    handles = [store.put_sample(key, shards) for key, shards in zip(keys, samples)]
    assert master.key_count() == 8
    assert all(store.exists(key, r) for key in keys for r in range(4))

    # rank 1 reads in its own process (cross-process TCP transfer), by sample key alone
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=read_in_other_process, args=(master.address, keys, 1, queue))
    proc.start()
    remote, remote_stats, still_there = pickle.loads(queue.get(timeout=45))
    proc.join(10)
    assert proc.exitcode == 0 and still_there == [False, False]
    for (dtype, layout), key, shards, got in zip(cases, keys, samples, remote):
        assert same_bits(got, shards[1]), f"{dtype} shard 1 differs after the cross-process round trip"
        check_shard(got, layout, 1, key=f"{key}_usp1")
    assert remote_stats["keys_read"] == 2
    assert remote_stats["bytes_read"] == sum(shard_nbytes(shards[1]) for shards in samples)
    assert master.key_count() == 6 and store.exists(handles[0], 0) and not store.exists(handles[0], 1)

    for (dtype, layout), handle, shards in zip(cases, handles, samples):
        for r in (0, 2, 3):
            got = store.get_shard(handle, r)
            assert same_bits(got, shards[r]), f"{dtype} shard {r} differs after the round trip"
            check_shard(got, layout, r)
    delta = {k: v - before[k] for k, v in store.stats().items()}
    assert delta["bytes_put"] == sum(shard_nbytes(s) for shards in samples for s in shards)
    assert delta["bytes_read"] == sum(shard_nbytes(shards[r]) for shards in samples for r in (0, 2, 3))
    assert delta["keys_put"] == 8 and delta["keys_read"] == 6 and delta["keys_deleted"] == 6
    assert master.key_count() == 0
    with pytest.raises(StoreError, match="'rt_contiguous_usp0' not found"):
        store.get_shard(handles[0], 0)


@pytest.mark.timeout(60)
def test_full_pool_retries_then_raises_naming_sizes(master, store) -> None:
    big = {"aux_hidden": torch.ones(4 * MiB // 2, dtype=torch.bfloat16)}  # 4 MiB per shard, pool 16 MiB
    first = store.put_sample("full_a", [big, big])  # 8 MiB
    with pytest.raises(StoreError) as err:
        store.put_sample("full_b", [big, big, big])  # shard 0 still fits, shard 1 does not
    msg = str(err.value)
    assert "pool full" in msg and "'full_b_usp1'" in msg and str(16 * MiB) in msg and "after 3 retries" in msg
    # the half-written full_b was rolled back; full_a is untouched (hard-pinned, never evicted)
    assert master.key_count() == 2 and not store.exists("full_b", 0) and store.exists(first, 1)

    # a reader draining the store during the backoff lets the put through
    slow = MooncakeTensorStore(options(master.address, global_segment_size=0, put_retries=10, retry_backoff_s=0.05))
    drain = threading.Timer(0.3, lambda: [store.delete(first, r) for r in range(2)])
    t0 = time.monotonic()
    drain.start()
    try:
        second = slow.put_sample("full_b", [big, big])
    finally:
        drain.join()
        slow.close()
    assert time.monotonic() - t0 >= 0.3  # it did wait for the drain
    assert master.key_count() == 2
    for r in range(2):
        store.delete(second, r)
        store.delete(second, r)  # deleting twice is a no-op


@pytest.mark.timeout(60)
def test_clear_errors(master, store) -> None:
    huge = {"x": torch.zeros(17 * MiB, dtype=torch.uint8)}
    with pytest.raises(StoreError, match=f"'huge_usp0' is {17 * MiB + 64} bytes, larger than the local buffer"):
        store.put_sample("huge", [huge])
    small = {"input_ids": torch.arange(4)}
    store.put_sample("dup", [small])
    with pytest.raises(StoreError, match="\\['dup_usp0'\\] already exist.*used twice"):
        store.put_sample("dup", [small, small])
    assert not store.exists("dup", 1)  # the refused put wrote nothing
    assert torch.equal(store.get_shard("dup", 0)["input_ids"], small["input_ids"])
    with pytest.raises(StoreError, match="'nothing_usp2' not found"):
        store.get_shard("nothing", 2)
    with pytest.raises(StoreError, match="not of the form host:port"):
        MooncakeTensorStore(options("localhost"))
    with pytest.raises(StoreError, match="global_segment_size=1024"):
        MooncakeTensorStore(options(master.address, global_segment_size=1024))


@pytest.mark.timeout(60)
def test_a_put_into_a_full_pool_waits_until_readers_drain_it(master, store) -> None:
    big = {"aux_hidden": torch.ones(4 * MiB // 2, dtype=torch.bfloat16)}  # 4 MiB per shard, pool 16 MiB
    first = store.put_sample("wait_a", [big, big, big])  # 12 MiB: the next 8 MiB do not fit
    waiting = MooncakeTensorStore(options(master.address, global_segment_size=0, put_retries=None, put_timeout_s=30))
    drain = threading.Timer(1.0, lambda: [store.delete(first, r) for r in range(3)])
    t0 = time.monotonic()
    drain.start()
    try:
        second = waiting.put_sample("wait_b", [big, big])
        waited = time.monotonic() - t0
        assert waiting.stats()["full_waits"] > 0
    finally:
        drain.join()
        waiting.close()
    assert waited >= 1.0 and master.key_count() == 2
    for r in range(2):
        store.delete(second, r)
