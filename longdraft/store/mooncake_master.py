"""Start and stop a local ``mooncake_master`` (used when ``store.mooncake.master_address`` is None).

The binary ships inside the ``mooncake-transfer-engine-non-cuda`` wheel (``mooncake/mooncake_master``;
the ``mooncake_master`` console script only execs it). The master binds its RPC port and its HTTP
metrics port to its host (127.0.0.1 unless told) on free ports; ``/metrics`` reports ``master_key_count``.

The master dies with the process that started it (``store/leash.py``: a parent-death signal), and a
master whose owner died anyway is killed by the next start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from longdraft.store.leash import reap_orphans, register, spawn_leashed


class MooncakeMasterError(RuntimeError):
    pass


def find_master_binary() -> str:
    try:
        import mooncake

        candidate = Path(mooncake.__file__).parent / "mooncake_master"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("mooncake_master")
    if found is None:
        raise MooncakeMasterError(
            "mooncake_master not found: install it with "
            "`pip install mooncake-transfer-engine-non-cuda` (needs Debian libibverbs1)"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


class MooncakeMaster:
    """A ``mooncake_master`` child process listening on ``host``. Use as a context manager or start/stop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        rpc_port: int | None = None,
        metrics_port: int | None = None,
        rpc_threads: int = 4,
        extra_args: tuple[str, ...] = (),
        log_path: str | None = None,
    ) -> None:
        self.host = host
        self.rpc_port = rpc_port
        self.metrics_port = metrics_port
        self.rpc_threads = rpc_threads
        self.extra_args = tuple(extra_args)
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._own_log = False  # a temp log we created: removed after a clean stop
        self._record: Path | None = None  # this master in the registry of leashed children

    @property
    def address(self) -> str:
        """``host:rpc_port``, the ``master_server_addr`` clients connect to."""
        return f"{self.host}:{self.rpc_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0, attempts: int = 3) -> MooncakeMaster:
        if self.running:
            return self
        reap_orphans()  # masters of drivers that died before they could stop them
        fixed = self.rpc_port is not None
        for attempt in range(1, attempts + 1):
            if not fixed:
                self.rpc_port, self.metrics_port = free_port(self.host), None
            if self.metrics_port is None:
                self.metrics_port = free_port(self.host)
            try:
                self._launch(timeout_s)
                return self
            except MooncakeMasterError:
                # a free port can be taken between probing and binding: retry on fresh ones
                if fixed or attempt == attempts:
                    raise
        return self

    def _launch(self, timeout_s: float) -> None:
        if self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="mooncake_master_", suffix=".log")
            os.close(fd)
            self._own_log = True
        cmd = [
            find_master_binary(),
            f"--rpc_address={self.host}",
            f"--rpc_port={self.rpc_port}",
            f"--metrics_host={self.host}",
            f"--metrics_port={self.metrics_port}",
            f"--rpc_thread_num={self.rpc_threads}",
            "--enable_http_metadata_server=false",
            *self.extra_args,
        ]
        env = dict(os.environ, GLOG_minloglevel=os.environ.get("GLOG_minloglevel", "1"))  # noqa: SIM112 (glog's own spelling)  # warnings and up
        with open(self.log_path, "ab") as log:
            self._proc = spawn_leashed(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        self._record = register(self._proc.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                self._forget()
                raise MooncakeMasterError(
                    f"mooncake_master exited with code {rc} while starting "
                    f"({' '.join(cmd)}); log {self.log_path}:\n{self._log_tail()}"
                )
            if port_open(self.host, self.rpc_port) and self._metrics_ready():
                return
            time.sleep(0.05)
        self.stop()
        raise MooncakeMasterError(
            f"mooncake_master did not accept connections on {self.address} within "
            f"{timeout_s:.0f} s; log {self.log_path}:\n{self._log_tail()}"
        )

    def _metrics_ready(self) -> bool:
        try:
            self.key_count()
            return True
        except (OSError, MooncakeMasterError):
            return False

    def key_count(self) -> int:
        """Keys the master currently manages (the ``master_key_count`` gauge)."""
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
        m = re.search(r"^master_key_count\s+(\d+)", text, re.MULTILINE)
        if m is None:
            raise MooncakeMasterError(f"{url} has no master_key_count gauge")
        return int(m.group(1))

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the master shuts down gracefully), SIGKILL after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            self._forget()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
        self._forget()
        if self._own_log and proc.returncode == 0:
            Path(self.log_path).unlink(missing_ok=True)
            self.log_path, self._own_log = None, False

    def _forget(self) -> None:
        if self._record is not None:
            self._record.unlink(missing_ok=True)
            self._record = None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> MooncakeMaster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._forget()
