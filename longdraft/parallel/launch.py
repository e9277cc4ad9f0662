"""Start N local ranks (one process each) with a real process group, and collect their results.

Used by the tests and the benchmark. Every rank runs ``fn(rank, world_size, *args)`` after
``init_process_group``; its return value (anything picklable) comes back to the caller in rank
order. A rank that raises is reported with its traceback and the other ranks are stopped; a run
that passes its deadline is stopped and reported with the ranks that had not finished, so a
collective mismatch shows up as an error instead of a hang.

Rendezvous goes through a ``FileStore`` in a private temporary directory (no port to race for);
gloo itself talks over loopback (``GLOO_SOCKET_IFNAME=lo``, ``MASTER_ADDR=127.0.0.1``).
"""

from __future__ import annotations

import os
import pickle
import queue
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from longdraft.parallel.mesh import process_group_backend


class RankFailed(RuntimeError):
    """A spawned rank raised; the message carries the rank and its traceback."""


def _rank_main(
    rank: int,
    world_size: int,
    store_path: str,
    backend: str,
    collective_timeout_s: float,
    threads: int | None,
    fn: Callable[..., Any],
    args: tuple,
    results: Any,
) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo carries CPU tensors on every backend
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        store = dist.FileStore(store_path, world_size)
        dist.init_process_group(
            process_group_backend("cuda" if backend == "nccl" else "cpu"),
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=collective_timeout_s),
        )
        try:
            value = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # report everything, including KeyboardInterrupt-like stops
        results.put((rank, False, traceback.format_exc()))


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    *,
    timeout_s: float = 60.0,
    backend: str = "gloo",
    threads: int | None = 1,
    collective_timeout_s: float | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` fresh processes; return results by rank.

    ``fn`` must be importable by name (a module-level function). ``backend`` ``nccl`` makes groups
    that take CUDA tensors by NCCL and CPU ones by gloo (``process_group_backend``). Raises ``RankFailed`` with the
    first failing rank's traceback, or ``TimeoutError`` naming the ranks still running after
    ``timeout_s``. Collectives inside the ranks time out after ``collective_timeout_s``
    (default: ``timeout_s``).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    coll_timeout = timeout_s if collective_timeout_s is None else collective_timeout_s
    with tempfile.TemporaryDirectory(prefix="longdraft-ranks-") as tmp:
        store_path = os.path.join(tmp, "store")
        procs = [
            ctx.Process(
                target=_rank_main,
                args=(rank, world_size, store_path, backend, coll_timeout, threads, fn, args, results),
                daemon=True,
            )
            for rank in range(world_size)
        ]
        for proc in procs:
            proc.start()
        try:
            return _collect(procs, results, world_size, timeout_s)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
            for proc in procs:
                proc.join(timeout=5)


def _collect(procs: list, results: Any, world_size: int, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    values: dict[int, Any] = {}
    while len(values) < world_size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = sorted(set(range(world_size)) - set(values))
            raise TimeoutError(f"ranks {missing} of {world_size} did not finish within {timeout_s:.0f} s")
        try:
            rank, ok, payload = results.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            dead = [
                r for r, p in enumerate(procs) if r not in values and not p.is_alive() and p.exitcode not in (0, None)
            ]
            if dead and results.empty():
                codes = {r: procs[r].exitcode for r in dead}
                raise RankFailed(f"ranks {dead} exited without a result (exit codes {codes})") from None
            continue
        if not ok:
            raise RankFailed(f"rank {rank} of {world_size} failed:\n{payload}")
        values[rank] = pickle.loads(payload)
    return [values[r] for r in range(world_size)]
