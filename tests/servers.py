"""Real servers on loopback for integration tests: uvicorn in a background thread, or a subprocess."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from cdn.http_server import ClientLimits, protocol_class

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class ThreadServer:
    """An ASGI app served by uvicorn on a loopback port in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None, proxy: bool = False) -> None:
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A proxy (an edge, the front door) runs on the server `cdn` runs it on (cdn.http_server's protocol).
        protocol = {"http": protocol_class(ClientLimits())} if proxy else {}
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                proxy_headers=False,
                                access_log=False, date_header=not proxy, server_header=not proxy, **protocol)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextlib.contextmanager
def cdn_service(*args: str, port: int | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m cdn <args> --port P` as a subprocess; yields it and its base URL, and stops it afterwards.

    Its output goes to a file (shown if it does not start): a pipe nobody drains would block it."""
    port = port or free_port()
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen([sys.executable, "-m", "cdn", *args, "--port", str(port)], cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=output, stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_port(port)
            except TimeoutError:
                proc.kill()
                proc.wait()
                output.seek(0)
                raise RuntimeError(f"cdn {' '.join(args)} did not start:\n{output.read().decode()}") from None
            yield proc, f"http://127.0.0.1:{port}"
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def cdn_process(*args: str, port: int | None = None) -> Iterator[str]:
    """`cdn_service`, yielding only the base URL."""
    with cdn_service(*args, port=port) as (_, url):
        yield url
