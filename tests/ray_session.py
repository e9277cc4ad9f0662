"""One local Ray instance for the whole pytest session (starting Ray costs ~10 s here).

Register with ``pytest_plugins = ["tests.ray_session"]`` in conftest.py; tests then take the
``ray_session`` fixture. Everything binds to 127.0.0.1; run Ray tests inside a loopback-only
namespace: ``unshare -n sh -c 'ip link set lo up; python -m pytest tests/pipeline -q'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=256 * 1024 * 1024,
            configure_logging=False,
            log_to_driver=True,
        )
    yield ray
    if started_here:
        ray.shutdown()
