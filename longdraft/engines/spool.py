"""The vLLM engine's spool folders (``/dev/shm`` where it exists), cleaned up even after a kill.

A folder is removed by its engine's finalizer, which never runs when the process is killed
(``ray.kill``, SIGKILL, the OOM killer), and in ``/dev/shm`` what it holds (a whole sample's
features each, at long context) is memory. So each folder is named after its owner process (pid and
start time), and creating one first removes the folders whose owner no longer runs: the next
engine, e.g. the producer Ray restarts, cleans up after a killed one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

PREFIX = "longdraft-vllm-"
_OWNED = re.compile(re.escape(PREFIX) + r"(\d+)-(\d+)-")


def spool_root() -> str:
    """``/dev/shm`` (shared memory) where it is writable, else the temporary directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _started(pid: int) -> int | None:
    """When ``pid`` started (centiseconds since the epoch), or None if it no longer runs."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(process.create_time() * 100)
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # another user's live process
        return -1


def remove_orphaned_spools(root: str) -> list[str]:
    """Remove the spool folders under ``root`` whose owner process is gone (a reused pid does not
    count: the start time must match). Returns the folders removed."""
    removed = []
    for name in sorted(os.listdir(root)):
        owner = _OWNED.match(name)
        if owner is None:
            continue
        started = _started(int(owner.group(1)))
        if started == -1 or (started is not None and abs(started - int(owner.group(2))) <= 1):
            continue
        path = os.path.join(root, name)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def create_spool(root: str | None = None) -> str:
    """A new spool folder owned by this process, after removing those of dead owners."""
    root = root or spool_root()
    remove_orphaned_spools(root)
    pid = os.getpid()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{pid}-{_started(pid)}-", dir=root)
