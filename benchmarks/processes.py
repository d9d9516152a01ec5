"""Processes a benchmark starts: free loopback ports, services in their own process groups, waiting for them to
listen, stopping them, and the CPU time they spent.

Each service leads its own session (so its process group is its whole tree, and Ctrl-C reaches only the
benchmark, which then stops it) and writes its output to a log file, whose tail goes into every error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class ServiceStartError(Exception):
    """A service could not start (no such program, it exited, or it did not listen in time); the message says why."""


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class Service:
    """A process started by `spawn`: the leader of its own session and process group, logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The process's id, which is also the id of its session and process group."""
        return self.process.pid

    @property
    def pgid(self) -> int:
        """The id of its process group: everything it started (workers, children) that signals reach at once."""
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log, for an error message."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def spawn(name: str, argv: Sequence[str], log_dir: Path, port: int | None = None) -> Service:
    """Start `argv` in the repository, in its own session, its output (unbuffered) in `log_dir`/`name`.log."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    return Service(name, process, log, port)


def spawn_redis(name: str, log_dir: Path) -> Service:
    """redis-server on a free loopback port, persisting nothing (its working dir is `log_dir`)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceStartError("redis-server is not on PATH: run ./dev setup (it installs it)")
    port = free_port()
    return spawn(name, [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                        "--dir", str(log_dir), "--protected-mode", "yes"], log_dir, port)


def wait_until_listening(services: Sequence[Service], timeout: float) -> None:
    """Return once every service's port accepts connections; fail if one exits first or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    for service in services:
        if service.port is None:
            raise ValueError(f"{service.name} was started without a port to wait for")
        while True:
            if service.process.poll() is not None:
                raise ServiceStartError(f"{service.name} exited with status {service.process.returncode} before "
                                        f"listening:\n{service.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, service.port), timeout=0.5):
                break
            if time.monotonic() >= deadline:
                raise ServiceStartError(f"{service.name} did not listen on port {service.port} within "
                                        f"{timeout:.0f} s:\n{service.log_tail()}")
            time.sleep(0.05)


def stop_all(services: Sequence[Service], grace: float = 5.0) -> None:
    """SIGTERM every service's process group at once, then SIGKILL the groups whose leader is left after `grace` s."""
    for service in services:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pgid, signal.SIGTERM)
            os.killpg(service.pgid, signal.SIGCONT)  # a paused (SIGSTOP) group handles SIGTERM only once continued
    deadline = time.monotonic() + grace
    for service in services:
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(max(0.0, deadline - time.monotonic()))
    for service in services:
        if service.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pgid, signal.SIGKILL)
            service.process.wait()


def group_cpu_seconds(pgids: Sequence[int]) -> dict[int, float]:
    """CPU time of the live threads of each process group, from Linux's /proc (schedstat: nanoseconds, not ticks)."""
    wanted = set(pgids)
    seconds = dict.fromkeys(pgids, 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a process that ended meanwhile
            pgrp = int(stat.read_text().rsplit(")", 1)[1].split()[2])  # after "pid (comm)": state, ppid, pgrp
            if pgrp in wanted:
                for task in (stat.parent / "task").glob("[0-9]*/schedstat"):
                    seconds[pgrp] += int(task.read_text().split()[0]) / 1e9
    return seconds
