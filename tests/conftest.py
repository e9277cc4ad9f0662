"""Shared pytest set-up: offline, loopback-only, one thread per process; markers by folder; tiny targets.

Kinds (one folder each, selected with ``-m``): ``unit`` (no processes), ``distributed`` (gloo process
groups), ``pipeline`` (Ray actors and stores), ``e2e`` (the CLI end to end), ``vllm`` (a real vLLM engine as
producer and as server). ``pytest -m unit`` is the
fast set; the README's test command runs everything.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.ray_session"]

KINDS = ("unit", "distributed", "pipeline", "e2e", "vllm")


def pytest_collection_modifyitems(config, items):
    for item in items:
        kind = Path(str(item.fspath)).parent.name
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory):
    """``tiny_target(**kwargs)``: a tiny random HF target directory, built once per distinct kwargs."""
    from longdraft.testing.tiny_target import build_tiny_target

    built: dict[tuple, Path] = {}

    def make(**kwargs) -> Path:
        key = tuple(sorted(kwargs.items()))
        if key not in built:
            built[key] = Path(build_tiny_target(tmp_path_factory.mktemp("tiny_target"), **kwargs))
        return built[key]

    return make
