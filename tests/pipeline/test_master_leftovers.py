"""A killed driver leaves no ``mooncake_master`` behind: the master dies with its driver (a parent-death
signal armed by a thread that lives as long as the master), and a master whose driver died anyway is
killed by the next start."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from longdraft.store.leash import register, registry_dir, start_time
from longdraft.store.mooncake_master import MooncakeMaster, find_master_binary, free_port, port_open

# A small driver: starts a master through longdraft's own code from a thread that then exits (the
# parent-death signal follows the forking thread, so a naive one would kill the master right there),
# reports the master's pid and keeps running, as a training run would, until it is killed.
DRIVER = textwrap.dedent(
    """
    import threading, time
    from longdraft.store.mooncake_master import MooncakeMaster
    masters = []
    starter = threading.Thread(target=lambda: masters.append(MooncakeMaster().start()))
    starter.start()
    starter.join()
    time.sleep(1.0)
    print(masters[0]._proc.pid if masters[0].running else "died with its starting thread", flush=True)
    time.sleep(600)
    """
)


def masters_left(pids: list[int]) -> list[int]:
    """Which of ``pids`` are still a live mooncake_master (a zombie is gone: it holds no port)."""
    left = []
    for pid in pids:
        try:
            alive = start_time(pid) is not None and b"mooncake_master" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            alive = False
        if alive:
            left.append(pid)
    return left


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := masters_left(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.timeout(90)
def test_sigkilled_driver_leaves_no_master():
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    try:
        line = driver.stdout.readline().strip()
        assert line.isdigit(), line
        master = int(line)
        assert masters_left([master]) == [master]  # alive while its driver runs
        records = [p for p in registry_dir().glob("*.json") if p.stem == str(master)]
        assert records  # registered with its owner, for the next run
        driver.send_signal(signal.SIGKILL)  # mid-run: no finaliser, no stop()
        driver.wait(10)
        assert wait_gone([master], 10.0) == []
    finally:
        driver.kill()
        driver.wait(10)


@pytest.mark.timeout(90)
def test_next_start_kills_a_master_whose_driver_died():
    # An orphan as a driver from before the parent-death signal would have left it: a real master,
    # in its own session, registered to a driver process that has since exited.
    dead_driver = subprocess.Popen([sys.executable, "-c", "pass"])
    port = free_port()
    orphan = subprocess.Popen(
        [
            find_master_binary(),
            "--rpc_address=127.0.0.1",
            f"--rpc_port={port}",
            "--metrics_host=127.0.0.1",
            f"--metrics_port={free_port()}",
            "--enable_http_metadata_server=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        register(orphan.pid, owner_pid=dead_driver.pid)  # recorded while the driver still ran
        dead_driver.wait(30)
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert masters_left([orphan.pid]) == [orphan.pid]
        with MooncakeMaster() as fresh:  # the next run
            assert fresh.running
            fresh_pid = fresh._proc.pid
            orphan.wait(10)  # reap it: the test process is its parent here
            assert masters_left([orphan.pid]) == []
            assert not (registry_dir() / f"{orphan.pid}.json").exists()
        assert not (registry_dir() / f"{fresh_pid}.json").exists()  # a stopped master is forgotten
    finally:
        orphan.kill()
        orphan.wait(10)
