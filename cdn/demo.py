"""`cdn demo`: an origin mock and an edge in front of it on loopback, with a first miss and hit shown."""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


@contextlib.contextmanager
def service(*args: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cdn <args> --port PORT` until the block ends."""
    proc = subprocess.Popen([sys.executable, "-m", "cdn", *args, "--port", str(port)])
    try:
        _wait_for_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(args: argparse.Namespace) -> int:
    """Start both services, show a miss then a hit, and keep running until Ctrl-C or --duration."""
    origin_url = f"http://127.0.0.1:{args.origin_port}"
    edge_url = f"http://127.0.0.1:{args.edge_port}"
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with service("origin", port=args.origin_port), \
             service("edge", "--origin", origin_url, "--admin-token", "demo", port=args.edge_port):
            print(f"origin mock: {origin_url}   edge: {edge_url}\n")
            with httpx.Client(base_url=edge_url) as client:
                for attempt in ("first request (miss)", "second request (hit)"):
                    response = client.get("/api/products/42")
                    print(f"{attempt:>22}: {response.status_code}  Cache-Status: {response.headers.get('cache-status')}")
            stats = httpx.get(origin_url + "/_origin/stats").json()
            print(f"{'origin requests':>22}: {stats['total']}\n")
            print("Try it yourself:")
            print(f"  curl -i {edge_url}/api/products/7        # a miss, then run it again for a hit")
            print(f"  curl -i {edge_url}/static/css/site-3.css")
            print(f"  curl -X POST {edge_url}/_edge/purge -H 'Authorization: Bearer demo' "
                  "-d '{\"kind\": \"tag\", \"values\": [\"product-7\"]}'")
            print(f"  curl {origin_url}/_origin/stats          # what reached the origin")
            print("\nCtrl-C stops both." if args.duration is None else f"\nStopping in {args.duration:.0f} s.")
            deadline = None if args.duration is None else time.monotonic() + args.duration
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"cdn demo: {exc}", file=sys.stderr)
        return 1
    print("stopped.")
    return 0
