"""Instructions a cache hit costs, edge against a bare ASGI app, through the edge's own HTTP server.

On a shared machine requests/s moves by a fifth from run to run; instructions
counted by valgrind's callgrind do not (the same count, to 0.1%, with the other
core busy). Each target runs in a child process under callgrind: its app behind
the protocol `cdn edge` serves with (`cdn.cli.uvicorn_options`: uvloop,
httptools, `cdn/http_server.py`), fed complete requests on an in-memory
transport, so the count covers parsing the request, the app and writing the
response, but not the kernel's socket work. Counting starts after a warm-up and
covers `--requests` requests. valgrind is installed from Debian's packages when
missing.

    .venv/bin/python benchmarks/hit_instructions.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bytes_origin import app as bare_app  # noqa: E402
from benchmarks.bytes_origin import path_for  # noqa: E402
from benchmarks.hit_bench import BenchError, ensure_programs  # noqa: E402

WARM_UP = 200
SIZE = 1024
HOST = "127.0.0.1"
TARGETS = {
    "bare": "bare ASGI app (bytes_origin), the edge's server",
    "edge": "edge, a fresh hit, the edge's server",
}


class MemoryTransport:
    """The least a transport does: counts writes and takes every other call."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def writelines(self, data: Sequence[bytes]) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (HOST, 40000), "sockname": (HOST, 8080)}.get(name, default)


def edge_with_one_entry() -> Any:
    """An edge holding one fresh 1 KiB entry for GET `path_for(SIZE)`, stored through its miss path."""
    from edge.app import ClientRequest, Edge
    from edge.headers import Headers
    from edge.settings import EdgeSettings

    settings = EdgeSettings(origin="http://127.0.0.1:9", access_log=False, metrics=False, log_level="warning")
    edge = Edge(settings)
    path = path_for(SIZE)
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"",
             "client": (HOST, 40000), "headers": [(b"host", HOST.encode())]}
    request = ClientRequest.from_scope(scope, settings)
    fields = Headers.from_raw([(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % SIZE),
                               (b"cache-control", b"public, max-age=3600"),
                               (b"date", email.utils.formatdate(usegmt=True).encode()), (b"server", b"uvicorn")])
    now = time.time()
    if not edge.put(request, edge.make_entry(request, 200, fields, b"x" * SIZE, now, now), None, 0):
        raise BenchError("the edge refused to store the entry")
    return edge


async def serve(target: str, requests: int) -> str:
    """Feed `requests` requests to `target` behind the edge's server protocol; counting on in between."""
    import uvicorn
    from uvicorn.server import ServerState

    from cdn.cli import uvicorn_options
    from edge.settings import EdgeSettings

    app = edge_with_one_entry() if target == "edge" else bare_app
    options = uvicorn_options(EdgeSettings(log_level="warning"), proxy=True)
    options.update(lifespan="off", log_config=None)
    config = uvicorn.Config(app, **options)
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = MemoryTransport()
    protocol.connection_made(transport)
    data = (f"GET {path_for(SIZE)} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n").encode()

    async def run(count: int) -> None:
        for _ in range(count):
            protocol.data_received(data)
            await asyncio.sleep(0)  # the app's task runs
            await asyncio.sleep(0)  # the coalesced write goes out

    await run(WARM_UP)
    callgrind_control("on")
    await run(requests)
    callgrind_control("off")
    hits = app.counters.get("hit", 0) if target == "edge" else None
    if transport.writes != WARM_UP + requests or hits not in (None, WARM_UP + requests):
        raise BenchError(f"{target}: {transport.writes} responses written, {hits} hits, "
                         f"for {WARM_UP + requests} requests")
    protocol.connection_lost(None)
    return f"{transport.writes} responses"


def callgrind_control(state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True, capture_output=True)


def count(target: str, requests: int) -> float:
    """Instructions per request of `target`, from a child process under callgrind."""
    with tempfile.TemporaryDirectory() as scratch:
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={scratch}/out",
                sys.executable, __file__, "--child", target, "--requests", str(requests)]
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=1800)
    collected = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or collected is None:
        raise BenchError(f"{target} under callgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(collected.group(1)) / requests


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests counted per target (default: 1000)")
    parser.add_argument("--child", choices=sorted(TARGETS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.child:
            import uvloop

            print(uvloop.run(serve(args.child, args.requests)))
            return 0
        ensure_programs(["valgrind"])
        counts = {target: count(target, args.requests) for target in TARGETS}
    except BenchError as exc:
        print(f"hit_instructions: {exc}", file=sys.stderr)
        return 1
    print(f"\nInstructions per {SIZE} B hit, {args.requests} requests per target (callgrind; Python "
          f"{sys.version.split()[0]})")
    for target, label in TARGETS.items():
        print(f"  {label:48s} {counts[target] / 1000:8.1f} k")
    ratio = counts["bare"] / counts["edge"]
    print(f"  bare / edge: {ratio:.2f} (goal: at least 0.85, the edge within 1/0.85 of its server's least work)"
          f" -> {'met' if ratio >= 0.85 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
