"""Child services that never outlive the process that started them.

Two guards, because neither covers every way a driver dies:

- ``spawn_leashed``: the child asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``). The kernel sends it when the *thread* that forked the child exits,
  not the process, so the fork is done by a thread of its own that lives exactly as long as the child.
- A registry of (child, owner) records: ``reap_orphans`` at the next start kills a child whose
  owner is gone (a kernel or a launcher that lost the signal, a child started by an older version).
  Processes are identified by pid and start time, so a reused pid is never mistaken for them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

PR_SET_PDEATHSIG = 1


def registry_dir() -> Path:
    return Path(tempfile.gettempdir()) / "longdraft-children"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat``), None once it is gone
    (a zombie counts as gone: it holds nothing but its pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _die_with(parent_pid: int):
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def spawn_leashed(cmd: list[str], **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen(cmd, **popen_kwargs)`` whose child is killed when this process dies."""
    started, box = threading.Event(), {}

    def fork_and_outlive() -> None:
        try:
            box["proc"] = proc = subprocess.Popen(cmd, preexec_fn=_die_with(os.getpid()), **popen_kwargs)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
            return
        finally:
            started.set()
        # Wait without reaping (WNOWAIT): the caller's Popen still collects the exit status.
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)

    name = f"parent of {Path(cmd[0]).name}"
    threading.Thread(target=fork_and_outlive, name=name, daemon=True).start()
    started.wait()
    if "error" in box:
        raise box["error"]
    return box["proc"]


def register(child_pid: int, owner_pid: int | None = None) -> Path:
    """Record that ``owner_pid`` (default: this process) owns ``child_pid``; returns the record."""
    owner_pid = os.getpid() if owner_pid is None else owner_pid
    record = {
        "child_pid": child_pid,
        "child_start": start_time(child_pid),
        "owner_pid": owner_pid,
        "owner_start": start_time(owner_pid),
    }
    path = registry_dir() / f"{child_pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n")
    return path


def reap_orphans() -> list[int]:
    """Kill every registered child whose owner is gone; returns their pids. Drops stale records."""
    killed = []
    for path in sorted(registry_dir().glob("*.json")) if registry_dir().is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written, or removed by another run reaping at the same time
        owner_alive = record["owner_start"] is not None and start_time(record["owner_pid"]) == record["owner_start"]
        if owner_alive:
            continue
        child, child_start = record["child_pid"], record["child_start"]
        if child_start is not None and start_time(child) == child_start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
                killed.append(child)
        path.unlink(missing_ok=True)
    return killed
