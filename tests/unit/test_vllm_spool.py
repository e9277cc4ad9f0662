"""The vLLM engine's spool folders: what a killed engine left (its finalizer never ran) is removed by
the next engine's spool creation, and nothing of a live owner's is touched."""

import os
import signal
import subprocess
import sys

import pytest

from longdraft.engines.spool import PREFIX, create_spool

# An engine's spool as the engine fills it: one features file per request in flight.
_ENGINE = """
import os, sys, time
from longdraft.engines.spool import create_spool
spool = create_spool(sys.argv[1])
for i in range(3):
    with open(os.path.join(spool, f"r{i}.safetensors"), "wb") as f:
        f.write(bytes(4096))
print(spool, flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(60)
def test_a_killed_engines_spool_is_removed_by_the_next_engine(tmp_path):
    root = str(tmp_path)
    engine = subprocess.Popen([sys.executable, "-c", _ENGINE, root], stdout=subprocess.PIPE, text=True)
    try:
        left = engine.stdout.readline().strip()
        assert sorted(os.listdir(left)) == ["r0.safetensors", "r1.safetensors", "r2.safetensors"]
    finally:
        engine.send_signal(signal.SIGKILL)  # as ray.kill does: no finalizer runs
        engine.wait(timeout=30)
        engine.stdout.close()
    assert os.path.isdir(left)  # the kill left it behind
    reused_pid = os.path.join(root, f"{PREFIX}{os.getpid()}-1-x")  # this pid, but not this process's start
    not_ours = [os.path.join(root, name) for name in ("longdraft-vllm-old", "other")]
    for path in (reused_pid, *not_ours):
        os.mkdir(path)

    mine = create_spool(root)  # the next engine

    left_behind = sorted(os.listdir(root))
    assert sorted(os.path.join(root, n) for n in left_behind) == sorted([mine, *not_ours])
    assert not os.path.exists(left) and not os.path.exists(reused_pid)
    assert create_spool(root) != mine and os.path.isdir(mine)  # a live owner's spool is kept
