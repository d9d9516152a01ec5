"""Running a service: its ASGI app on uvicorn or granian, in one process or in several worker processes.

Workers are forked from one process that binds the port first, so they share
its listening socket and the kernel spreads connections over them. A worker
that dies is started again; SIGTERM or SIGINT stops them all (SIGKILL for any
still running after `STOP_GRACE`), and workers die with their supervisor.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

# (worker number, listening socket or None) -> runs one server until it stops
RunWorker = Callable[[int, "socket.socket | None"], None]

RESTART_DELAY = 1.0  # seconds before a worker that died is started again
STOP_GRACE = 10.0  # seconds workers have to stop on SIGTERM (uvicorn's own grace is 5 s) before SIGKILL
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run_granian(app: Any, host: str, port: int, log_level: str) -> None:
    """Serve `app` on granian's embedded server (one process; it binds its own socket)."""
    try:
        from granian.constants import Interfaces
        from granian.log import LogLevels
        from granian.server.embed import Server
    except ImportError:
        raise SystemExit("server 'granian' needs the granian package: pip install 'cdn[granian]'") from None

    server = Server(app, address=host, port=port, interface=Interfaces.ASGI, websockets=False, backlog=2048,
                    log_level=LogLevels(log_level), log_access=False)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.stop)
        await server.serve()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker shares."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """Linux: have the kernel kill this process when the supervisor dies, however it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: a worker outliving its supervisor is stopped by hand
        pass


def supervise(run_worker: RunWorker, workers: int, sock: socket.socket) -> int:
    """Fork `workers` processes running `run_worker`; restart any that dies until told to stop.

    On SIGTERM or SIGINT the workers get the same signal; any still running `STOP_GRACE` seconds
    later is killed, so a worker stuck in its shutdown never keeps the supervisor (or the port)."""
    children: dict[int, int] = {}  # pid -> worker number
    stopping_since: float | None = None

    def start(number: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _die_with_parent()
            if os.getppid() != parent:  # the supervisor died before the line above took effect
                os._exit(1)
            code = 0
            try:
                run_worker(number, sock)
            except BaseException:  # noqa: BLE001 - a worker reports any crash and exits with its status
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = number

    def signal_all(signum: int) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping_since
        if stopping_since is None:
            stopping_since = time.monotonic()
        signal_all(signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for number in range(workers):
        start(number)
    status = 0
    while children:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:  # none exited: check the stop deadline now and then
            if stopping_since is not None and time.monotonic() - stopping_since > STOP_GRACE:
                signal_all(signal.SIGKILL)
            time.sleep(0.05)
            continue
        number = children.pop(pid, None)
        if number is None:
            continue
        code = os.waitstatus_to_exitcode(wait_status)
        if stopping_since is not None:
            status = status or (code if code > 0 else 0)
            continue
        print(f"worker {number} (pid {pid}) exited with status {code}; starting it again", file=sys.stderr)
        time.sleep(RESTART_DELAY)
        if stopping_since is None:
            start(number)
    sock.close()
    return status
