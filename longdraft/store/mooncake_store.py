"""Mooncake tensor store: one Mooncake object per SP shard, key ``{sample_key}_usp{r}``.

One object per shard (not one per tensor) because a trainer always needs all tensors of its
shard together: one master round trip per put, get and remove instead of three or four, the
shard is atomically present or absent, and its `ShardHeader` travels inside the same object.
Object layout: ``b"LDSHARD1"``, u64 JSON length, JSON ``[[name, dtype, shape, offset, nbytes], ...]``,
then each tensor's bytes at a 64-byte aligned offset from the aligned end of that header (so a
read is one buffer and every tensor a view of it).

Objects are put hard-pinned: the master must never evict a shard that no trainer has read yet
(its default evicts leased-out objects when a segment fills). A full pool is retried with
backoff (trainers free space as they read), then refused with the sizes named. Readers delete
with ``force=True`` because a get grants a lease that would block a plain remove. Shards live in
the segments lent by clients (``global_segment_size > 0``): closing such a client drops them, so
the lending client must outlive the readers (readers can lend nothing: ``global_segment_size=0``).
"""

from __future__ import annotations

import ctypes
import json
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from longdraft.store.base import SampleHandle, StoreError, TensorStore, check_rank, shard_key, shard_nbytes
from longdraft.store.mooncake_master import port_open

MAGIC = b"LDSHARD1"
ALIGN = 64
MIN_SEGMENT_BYTES = 16 * 1024 * 1024  # the client refuses to mount a smaller global segment

# Mooncake ErrorCode values (mooncake-store types.h) that this store handles by name.
NO_AVAILABLE_HANDLE = -200  # no space left in any mounted segment
OBJECT_NOT_FOUND = -704
_ERROR_NAMES = {
    -1: "INTERNAL_ERROR",
    -10: "BUFFER_OVERFLOW",
    -200: "NO_AVAILABLE_HANDLE (pool full)",
    -600: "INVALID_PARAMS",
    -704: "OBJECT_NOT_FOUND",
    -705: "OBJECT_ALREADY_EXISTS",
    -706: "OBJECT_HAS_LEASE",
    -707: "LEASE_EXPIRED",
    -800: "TRANSFER_FAIL",
    -900: "RPC_FAIL",
}

START_HINT = (
    "start one with `mooncake_master --rpc_address=127.0.0.1 --rpc_port=PORT` (from the "
    "mooncake-transfer-engine-non-cuda wheel), or leave store.mooncake.master_address unset "
    "so that longdraft starts a local master"
)


def error_name(rc: int) -> str:
    return f"{rc} ({_ERROR_NAMES.get(rc, 'see mooncake ErrorCode')})"


@dataclass
class MooncakeStoreOptions:
    master_address: str  # "host:port" of mooncake_master's RPC server
    local_hostname: str = "127.0.0.1"
    metadata_server: str = "P2PHANDSHAKE"
    protocol: str = "tcp"
    device_name: str = ""
    global_segment_size: int = 256 * 1024 * 1024  # bytes this client lends the pool (>= 16 MiB, or 0: none)
    local_buffer_size: int = 128 * 1024 * 1024  # staging buffer: must hold the largest shard
    # A full pool makes a put wait (readers free space as they consume shards): it retries with a
    # backoff doubling from retry_backoff_s (capped at 2 s) for put_timeout_s, or put_retries times.
    put_timeout_s: float = 600.0
    put_retries: int | None = None
    retry_backoff_s: float = 0.05
    connect_timeout_s: float = 2.0

    @classmethod
    def from_config(cls, mc: Any, master_address: str, **overrides: Any) -> MooncakeStoreOptions:
        """From a `longdraft.config.MooncakeConfig` (sizes in MiB) and the resolved master address."""
        return cls(
            master_address=master_address,
            metadata_server=mc.metadata_server,
            protocol=mc.protocol,
            device_name=mc.device_name,
            global_segment_size=mc.global_segment_size_mb << 20,
            local_buffer_size=mc.local_buffer_size_mb << 20,
            put_timeout_s=mc.put_timeout_s,
            **overrides,
        )


# --- serialization ---------------------------------------------------------------------------


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def encode_shard(shard: Mapping[str, torch.Tensor]) -> tuple[list[Any], int]:
    """Byte parts of one shard object (handed to Mooncake without joining them) and its size."""
    flat = {name: t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for name, t in shard.items()}
    entries, offset = [], 0  # offsets are relative to the payload start
    for name, t in shard.items():
        entries.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset, flat[name].numel()])
        offset = _align(offset + flat[name].numel())
    meta = json.dumps(entries).encode()
    head = MAGIC + struct.pack("<Q", len(meta)) + meta
    parts: list[Any] = [head]
    pos = len(head)
    for name, _, _, off, nbytes in entries:
        parts.append(bytes(_align(len(head)) + off - pos))
        parts.append(flat[name].numpy())
        pos = _align(len(head)) + off + nbytes
    return [p for p in parts if len(p)], pos


def decode_shard(buf: torch.Tensor, key: str) -> dict[str, torch.Tensor]:
    """Tensors as views of ``buf`` (uint8), checked against the object's own size."""
    raw = bytes(buf[: len(MAGIC) + 8].numpy())
    if len(raw) < len(MAGIC) + 8 or raw[: len(MAGIC)] != MAGIC:
        raise StoreError(f"Mooncake object {key!r} is not a longdraft shard (bad magic {raw[:8]!r})")
    (meta_len,) = struct.unpack("<Q", raw[len(MAGIC) :])
    head_len = len(MAGIC) + 8 + meta_len
    entries = json.loads(bytes(buf[len(MAGIC) + 8 : head_len].numpy()))
    out = {}
    for name, dtype_name, shape, off, nbytes in entries:
        dtype = getattr(torch, dtype_name, None)
        start = _align(head_len) + off
        if not isinstance(dtype, torch.dtype) or start + nbytes > buf.numel():
            raise StoreError(
                f"Mooncake object {key!r}: tensor {name!r} ({dtype_name}, {shape}, bytes "
                f"[{start}, {start + nbytes})) does not fit the {buf.numel()}-byte object"
            )
        out[name] = buf[start : start + nbytes].view(dtype).reshape(shape)
    return out


# --- the store -------------------------------------------------------------------------------


class MooncakeTensorStore(TensorStore):
    def __init__(self, options: MooncakeStoreOptions) -> None:
        super().__init__()
        self.options = options
        try:
            from mooncake.store import MooncakeDistributedStore, ReplicateConfig
        except ImportError as e:
            raise StoreError(
                "the Mooncake store needs `pip install mooncake-transfer-engine-non-cuda` "
                f"(and Debian package libibverbs1): {e}"
            ) from e
        o = options
        if 0 < o.global_segment_size < MIN_SEGMENT_BYTES:
            raise StoreError(
                f"Mooncake global_segment_size={o.global_segment_size} bytes; expected 0 or "
                f">= {MIN_SEGMENT_BYTES} (16 MiB)"
            )
        host, _, port = o.master_address.rpartition(":")
        if not host or not port.isdigit():
            raise StoreError(f"Mooncake master address {o.master_address!r} is not of the form host:port")
        # setup() itself retries an absent master for ~90 s; fail fast with a useful message instead
        if not port_open(host, int(port), o.connect_timeout_s):
            raise StoreError(
                f"cannot reach the Mooncake master at {o.master_address} (nothing accepts "
                f"connections there); {START_HINT}"
            )
        self._client = MooncakeDistributedStore()
        rc = self._client.setup(
            o.local_hostname,
            o.metadata_server,
            o.global_segment_size,
            o.local_buffer_size,
            o.protocol,
            o.device_name,
            o.master_address,
        )
        if rc != 0:
            raise StoreError(
                f"Mooncake client setup failed with {error_name(rc)} (master {o.master_address}, "
                f"metadata {o.metadata_server!r}, protocol {o.protocol!r}, global segment "
                f"{o.global_segment_size} B, local buffer {o.local_buffer_size} B)"
            )
        self._pin = ReplicateConfig()
        self._pin.with_hard_pin = True  # never evicted: removed only by the reader

    # -- writer --

    def put_sample(self, key: str, shards: Sequence[Mapping[str, torch.Tensor]]) -> SampleHandle:
        if not shards:
            raise StoreError(f"sample {key!r}: no shards to put")
        keys = [shard_key(key, r) for r in range(len(shards))]
        # Mooncake answers a put on an existing key with success and keeps the OLD bytes: refuse it
        taken = [k for k, rc in zip(keys, self._client.batch_is_exist(keys)) if rc != 0]
        if taken:
            raise StoreError(
                f"Mooncake objects {taken} already exist (a sample key used twice, or shards of an "
                "earlier run never read); refusing to put sample " + repr(key)
            )
        sizes = []
        for r, shard in enumerate(shards):
            try:
                sizes.append(self._put_one(shard_key(key, r), shard))
            except StoreError:
                for done in range(r):  # leave nothing half-written behind
                    self._client.remove(shard_key(key, done), True)
                raise
        self._stats.add(keys_put=len(shards), bytes_put=sum(shard_nbytes(s) for s in shards))
        return SampleHandle(key=key, num_shards=len(shards), shard_nbytes=tuple(sizes))

    def _put_one(self, k: str, shard: Mapping[str, torch.Tensor]) -> int:
        parts, size = encode_shard(shard)
        o = self.options
        if size > o.local_buffer_size:
            raise StoreError(
                f"Mooncake object {k!r} is {size} bytes, larger than the local buffer "
                f"({o.local_buffer_size} bytes): raise store.mooncake.local_buffer_size_mb"
            )
        delay, attempt, deadline = o.retry_backoff_s, 0, time.monotonic() + o.put_timeout_s
        while True:
            rc = self._client.put_parts(k, *parts, config=self._pin)
            if rc == 0:
                return size
            if rc != NO_AVAILABLE_HANDLE:
                raise StoreError(f"Mooncake put of {k!r} ({size} bytes) failed with {error_name(rc)}")
            out_of_tries = attempt >= o.put_retries if o.put_retries is not None else time.monotonic() > deadline
            if out_of_tries:
                break
            attempt += 1
            self._stats.add(full_waits=1)
            time.sleep(delay)  # readers free space as they consume shards
            delay = min(2 * delay, 2.0)
        waited = f"{attempt} retries" if o.put_retries is not None else f"{o.put_timeout_s:.0f} s"
        raise StoreError(
            f"Mooncake pool full: could not put {k!r} ({size} bytes) after {waited} "
            f"with backoff; this client lends {o.global_segment_size} bytes to the pool "
            "(store.mooncake.global_segment_size_mb; the master keeps ~10% of it free): raise it, "
            "or let trainers drain the store"
        )

    def worker_spec(self) -> dict:
        return asdict(replace(self.options, global_segment_size=0))

    # -- reader --

    def get_shard(self, handle: SampleHandle | str, r: int, *, delete: bool = True) -> dict[str, torch.Tensor]:
        k = self._key(handle, r)
        buf_handle = self._client.get_buffer(k)
        if buf_handle is None:
            raise StoreError(
                f"Mooncake object {k!r} not found (never written, already read and deleted, or the "
                "client that lent the segment holding it has closed)"
            )
        size = buf_handle.size()
        buf = torch.empty(size, dtype=torch.uint8)
        ctypes.memmove(buf.data_ptr(), buf_handle.ptr(), size)
        del buf_handle  # release the client's staging buffer
        shard = decode_shard(buf, k)
        self._stats.add(keys_read=1, bytes_read=shard_nbytes(shard))
        if delete:
            self.delete(handle, r)
        return shard

    def delete(self, handle: SampleHandle | str, r: int) -> None:
        k = self._key(handle, r)
        rc = self._client.remove(k, True)  # force: our own get left a lease on the object
        if rc == 0:
            self._stats.add(keys_deleted=1)
        elif rc != OBJECT_NOT_FOUND:
            raise StoreError(f"Mooncake remove of {k!r} failed with {error_name(rc)}")

    def discard(self, key: str, num_shards: int) -> None:
        for r in range(num_shards):
            self._client.remove(shard_key(key, r), True)  # not found is fine: nothing was written

    def exists(self, handle: SampleHandle | str, r: int) -> bool:
        k = self._key(handle, r)
        rc = self._client.is_exist(k)
        if rc < 0:
            raise StoreError(f"Mooncake is_exist({k!r}) failed with {error_name(rc)}")
        return rc == 1

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    @staticmethod
    def _key(handle: SampleHandle | str, r: int) -> str:
        if isinstance(handle, SampleHandle):
            check_rank(handle, r)
            return shard_key(handle.key, r)
        if r < 0:
            raise StoreError(f"sample {handle!r}: shard {r} is negative")
        return shard_key(handle, r)
