"""A simulated two-node Ray cluster on this one machine (head 127.0.0.1, worker 127.0.0.2).

``with two_node_cluster() as info:`` starts it; connect from a *subprocess* with
``ray.init(address=info.address)`` (the pytest process may already hold its own Ray session).
Or take the module-scoped ``two_nodes`` fixture. Run inside a loopback-only namespace:
``unshare -n sh -c 'ip link set lo up; python3 -m pytest tests/pipeline -q'``.

Never uses ``ray stop``: only the sessions started here are killed (see ``_stop``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HEAD_IP = "127.0.0.1"
WORKER_IP = "127.0.0.2"
# Fixed ports come from below the kernel's ephemeral range (32768+), so an outgoing
# connection can't grab one between picking and binding.
_PORT_LO, _PORT_HI = 20000, 32000
_WORKER_PORTS_PER_NODE = 64


class RayClusterError(RuntimeError):
    """The cluster did not come up; the message carries the tail of the Ray logs."""


@dataclass
class ClusterInfo:
    address: str  # "127.0.0.1:PORT", for ray.init(address=...) / ray start --address
    node_ips: list[str]
    temp_dir: str
    # Session ids (== pids of the setsid'd `ray start`), so tests can check nothing survives.
    session_ids: list[int] = field(default_factory=list)


def ray_env() -> dict[str, str]:
    """Environment for every Ray process started here (and for drivers connecting to it)."""
    env = dict(os.environ)
    # A pytest-local ray.init may have exported its own address; ours is always passed explicitly.
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        GLOO_SOCKET_IFNAME="lo",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def loopback_only() -> bool:
    """True when this network namespace routes nowhere but ``lo`` (as under ``unshare -n``)."""
    ifaces = set()
    with contextlib.suppress(OSError):
        ifaces |= {ln.split()[0] for ln in Path("/proc/net/route").read_text().splitlines()[1:] if ln.strip()}
    with contextlib.suppress(OSError):
        ifaces |= {ln.split()[-1] for ln in Path("/proc/net/ipv6_route").read_text().splitlines() if ln.strip()}
    return ifaces <= {"lo"}


def _port_free(port: int) -> bool:
    # Bind the wildcard address: several Ray servers listen on 0.0.0.0, so a port taken on any
    # local address (127.0.0.1 vs 127.0.0.2) would still collide.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


class _PortPicker:
    """Hands out distinct free ports (and contiguous free ranges) from [_PORT_LO, _PORT_HI)."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def range(self, n: int) -> tuple[int, int]:
        for _ in range(200):
            lo = random.randrange(_PORT_LO, _PORT_HI - n)
            ports = range(lo, lo + n)
            if not self.taken.intersection(ports) and all(_port_free(p) for p in ports):
                self.taken.update(ports)
                return lo, lo + n - 1
        raise RayClusterError(f"no {n} free contiguous ports in [{_PORT_LO}, {_PORT_HI})")

    def one(self) -> int:
        return self.range(1)[0]


def _node_port_flags(pp: _PortPicker) -> list[str]:
    # Every per-node server gets an explicit port: defaults (e.g. dashboard agent 52365,
    # runtime-env agent, metrics) are fixed numbers and the two nodes share one port space.
    lo, hi = pp.range(_WORKER_PORTS_PER_NODE)
    return [
        f"--object-manager-port={pp.one()}",
        f"--node-manager-port={pp.one()}",
        f"--dashboard-agent-listen-port={pp.one()}",
        f"--dashboard-agent-grpc-port={pp.one()}",
        f"--runtime-env-agent-port={pp.one()}",
        f"--metrics-export-port={pp.one()}",
        f"--min-worker-port={lo}",
        f"--max-worker-port={hi}",
    ]


def _sessions_procs(sids: set[int], marker: str) -> list[tuple[int, str]]:
    """Live (pid, state) of processes in one of ``sids`` or whose command line names ``marker``.

    The marker (our private temp dir) catches anything that left the session via setsid.
    Zombies count as gone: they hold no resources, and PID 1 in a container may never reap them.
    """
    found = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            stat = (d / "stat").read_text()
            # Fields after the ")" of comm: state ppid pgrp session ...
            state, _ppid, _pgrp, sid = stat.rsplit(")", 1)[1].split()[:4]
            if state == "Z":
                continue
            hit = int(sid) in sids
            if not hit and marker:
                hit = marker.encode() in (d / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        if hit:
            found.append((int(d.name), state))
    return found


def live_session_procs(info: ClusterInfo) -> list[int]:
    """Pids still alive from the cluster's sessions (empty once the context has exited)."""
    return [pid for pid, _ in _sessions_procs(set(info.session_ids), info.temp_dir)]


def _stop(procs: list[subprocess.Popen], marker: str, grace_s: float = 2.0) -> None:
    """SIGTERM each started session's process group, then SIGKILL whatever is left.

    The grace is short on purpose: the worker node exits in ~1 s, but the head's graceful
    shutdown takes well over 8 s here, and nothing it would flush outlives the temp dir anyway.
    """
    sids = {p.pid for p in procs}
    for p in reversed(procs):  # worker node first, so it doesn't spin reconnecting to a dead GCS
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _sessions_procs(sids, marker):
        for p in procs:
            p.poll()  # reap our direct children so they don't linger as zombies
        time.sleep(0.1)
    for _ in range(50):
        left = _sessions_procs(sids, marker)
        if not left:
            break
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        # Fallback: a process may have changed process group (Ray calls setpgrp) but not session.
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for p in procs:
            p.poll()
        time.sleep(0.1)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=2)
    left = _sessions_procs(sids, marker)
    if left:
        raise RayClusterError(f"Ray processes survived SIGKILL: {left}")


def _log_tail(temp_dir: Path, lines: int = 25, width: int = 300) -> str:
    """Tail of our `ray start` output and of the most telling Ray logs under ``temp_dir``."""
    out = []
    files = sorted(temp_dir.glob("*.log"))
    # session_2* (not session_*): skip the session_latest symlink, which would repeat everything.
    for name in ("gcs_server.out", "gcs_server.err", "raylet.out", "raylet.err"):
        files += sorted(temp_dir.glob(f"*/session_2*/logs/{name}"))
    files += [f for f in sorted(temp_dir.glob("*/session_2*/logs/*.err")) if f not in files]
    for f in files:
        try:
            text = [ln[:width] for ln in f.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        if text:
            out.append(f"==> {f.relative_to(temp_dir)} <==\n" + "\n".join(text[-lines:]))
    return "\n".join(out) or f"(no Ray logs under {temp_dir})"


def _start_node(args: list[str], log: Path, env: dict[str, str], prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    # --block keeps `ray start` as the session leader watching its children; the new session
    # lets us kill exactly this node (and nobody else's Ray) with one killpg. A prefix must exec
    # the command (keep its pid), e.g. `unshare -m ...`.
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _wait_started(proc: subprocess.Popen, log: Path, deadline: float, what: str) -> None:
    """Until `ray start --block` reports the runtime up (it then just blocks)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RayClusterError(f"{what}: `ray start` exited with {proc.returncode}")
        if b"Ray runtime started" in log.read_bytes():
            return
        time.sleep(0.2)
    raise RayClusterError(f"{what}: `ray start` not up within the deadline")


_CHECK_NODES = r"""
import json, sys, time
import ray
address, want, num_gpus, deadline = sys.argv[1], set(json.loads(sys.argv[2])), float(sys.argv[3]), time.monotonic() + float(sys.argv[4])
ray.init(address=address, configure_logging=False, log_to_driver=False)
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    ips = {n["NodeManagerAddress"] for n in alive}
    if ips == want and len(alive) == len(want) and all(n["Resources"].get("GPU") == num_gpus for n in alive):
        print(json.dumps(sorted(ips)))
        sys.exit(0)
    if time.monotonic() > deadline:
        print("nodes seen:", json.dumps([(n["NodeManagerAddress"], n["Alive"], n["Resources"]) for n in ray.nodes()]), file=sys.stderr)
        sys.exit(1)
    time.sleep(0.2)
"""


@contextlib.contextmanager
def two_node_cluster(
    num_cpus: int = 4,
    num_gpus: int = 2,
    object_store_bytes: int = 200_000_000,
    timeout_s: float = 60.0,
    worker_prefix: tuple[str, ...] = (),
) -> Iterator[ClusterInfo]:
    """Start head + worker node, wait until both are alive, yield ``ClusterInfo``; always clean up.

    ``worker_prefix`` runs the worker node under a command that execs it (see ``private_dir_prefix``)."""
    if not loopback_only():
        # Ray "resolves" --node-ip-address=127.0.0.1 to the address it would use to reach
        # 8.8.8.8; with a real route the head would advertise (and bind) a non-loopback IP.
        raise RayClusterError(
            "two_node_cluster needs a loopback-only network namespace: "
            "unshare -n sh -c 'ip link set lo up; python3 -m pytest ...'"
        )
    # Short private root: unix socket paths must stay under ~107 bytes. One subdir per node so
    # the nodes' socket and log names never clash.
    temp_dir = Path(f"/tmp/ldray_{secrets.token_hex(4)}")
    temp_dir.mkdir(mode=0o700)
    env = ray_env()
    pp = _PortPicker()
    gcs_port = pp.one()
    address = f"{HEAD_IP}:{gcs_port}"
    common = [
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
        f"--object-store-memory={object_store_bytes}",
        "--disable-usage-stats",
        "--log-style=record",
        "--log-color=false",
    ]
    procs: list[subprocess.Popen] = []
    info = ClusterInfo(address=address, node_ips=[HEAD_IP, WORKER_IP], temp_dir=str(temp_dir))
    deadline = time.monotonic() + timeout_s
    try:
        try:
            head_log = temp_dir / "head_start.log"
            procs.append(
                _start_node(
                    [
                        "--head",
                        f"--node-ip-address={HEAD_IP}",
                        f"--port={gcs_port}",
                        f"--ray-client-server-port={pp.one()}",
                        "--include-dashboard=false",
                        # Even with the dashboard off, a minimal dashboard head still binds 8265.
                        f"--dashboard-port={pp.one()}",
                        f"--dashboard-host={HEAD_IP}",
                        f"--temp-dir={temp_dir / 'h'}",
                        *_node_port_flags(pp),
                        *common,
                    ],
                    head_log,
                    env,
                )
            )
            info.session_ids.append(procs[-1].pid)
            # The worker node must not start before the head's GCS answers.
            _wait_started(procs[-1], head_log, deadline, "head node")
            worker_log = temp_dir / "worker_start.log"
            procs.append(
                _start_node(
                    [
                        f"--address={address}",
                        f"--node-ip-address={WORKER_IP}",
                        f"--temp-dir={temp_dir / 'w'}",
                        *_node_port_flags(pp),
                        *common,
                    ],
                    worker_log,
                    env,
                    worker_prefix,
                )
            )
            info.session_ids.append(procs[-1].pid)
            _wait_started(procs[-1], worker_log, deadline, "worker node")
            # Check from a subprocess: this pytest process may already have its own ray.init.
            left = max(5.0, deadline - time.monotonic())
            try:
                r = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        _CHECK_NODES,
                        address,
                        json.dumps(info.node_ips),
                        str(float(num_gpus)),
                        str(left),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=left + 30,
                )
            except subprocess.TimeoutExpired as e:
                raise RayClusterError(f"node check hung:\n{e.stderr}") from e
            if r.returncode != 0:
                raise RayClusterError(f"both nodes not alive within {timeout_s} s:\n{r.stderr[-3000:]}")
        except Exception as e:
            raise RayClusterError(f"{e}\n--- Ray logs ({temp_dir}) ---\n{_log_tail(temp_dir)}") from e
        yield info
    finally:
        try:
            _stop(procs, str(temp_dir))
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)


def private_dir_prefix(directory: Path) -> tuple[str, ...]:
    """A ``worker_prefix`` under which ``directory`` is an empty tmpfs of the worker node's own: a
    private mount namespace (needs root), as a node without a shared filesystem would see it."""
    directory.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs longdraft-private "$0" && exec "$@"'
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(directory))


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[ClusterInfo]:
    """Module-scoped ``two_node_cluster()`` with defaults (4 CPUs, 2 GPUs per node)."""
    with two_node_cluster() as info:
        yield info
