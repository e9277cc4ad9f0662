"""Run a rank function once per world size and share its per-rank results among a module's tests
(spawning ranks costs seconds; every test then checks its own part of the results)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from longdraft.parallel.launch import run_ranks

_CACHE: dict[tuple[str, str, int], list[Any]] = {}


def cached_run_ranks(fn: Callable[..., Any], world: int, timeout_s: float) -> list[Any]:
    key = (fn.__module__, fn.__qualname__, world)
    if key not in _CACHE:
        _CACHE[key] = run_ranks(fn, world, timeout_s=timeout_s)
    return _CACHE[key]
