"""Each balancing algorithm over the same uneven origins and the same requests: latency and who got the traffic.

Three small ASGI servers run as subprocesses on loopback: `steady` (light 10 ms,
heavy 100 ms), `slow` (twice as slow) and `congested` (as fast as steady, but
with three workers, so it queues under concurrency; it reports its busy fraction
as `load`). Work is a sleep, long enough that the servers, not the client's CPU,
decide the latency on a small machine. Weights are what an operator would guess from single requests:
steady 2, slow 1, congested 2. Every algorithm gets the same sequence of light
and heavy requests (80/20, keys drawn from a skewed object set) at a fixed
concurrency, with health checks every 0.1 s; rounds interleave the algorithms
so a noisy neighbour slows each alike. round_robin is the baseline of ratios.

Requests go over keep-alive HTTP/1.1 connections driven by h11 rather than
httpx: on a small shared machine httpx spends milliseconds of CPU per request,
enough to make the client, not the origins, decide the latency.

    .venv/bin/python benchmarks/balancer_bench.py [--requests N] [--concurrency C] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from balancer import OriginPool, PoolSettings  # noqa: E402
from balancer.settings import AlgorithmName  # noqa: E402
from benchmarks.processes import HOST, Service, free_port, spawn, stop_all, wait_until_listening  # noqa: E402

START_TIMEOUT = 20.0
ALGORITHMS: tuple[AlgorithmName, ...] = (
    "round_robin", "weighted_round_robin", "least_connections", "least_response_time", "resource_based", "consistent_hash")
HEAVY_SHARE = 0.2
OBJECTS = 300


@dataclass(frozen=True)
class Profile:
    """How one origin server behaves."""

    light: float  # seconds of work for a light request
    heavy: float
    workers: int | None  # None: unlimited concurrency
    weight: int


PROFILES = {
    "steady": Profile(light=0.010, heavy=0.100, workers=None, weight=2),
    "slow": Profile(light=0.020, heavy=0.200, workers=None, weight=1),
    "congested": Profile(light=0.010, heavy=0.100, workers=3, weight=2),
}


# -- the origin servers ----------------------------------------------------------
class BenchOrigin:
    """`GET /light/..`, `GET /heavy/..` take the profile's time; `/healthz` reports requests in flight (and load)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.in_flight = 0
        self.workers = asyncio.Semaphore(profile.workers) if profile.workers else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/healthz":
            report: dict[str, Any] = {"status": "ok", "in_flight": self.in_flight}
            if self.profile.workers:
                report["load"] = min(1.0, self.in_flight / self.profile.workers)
            body = json.dumps(report).encode()
        else:
            self.in_flight += 1
            try:
                work = self.profile.heavy if scope["path"].startswith("/heavy") else self.profile.light
                async with self.workers or contextlib.nullcontext():
                    await asyncio.sleep(work)
            finally:
                self.in_flight -= 1
            body = b"ok"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def serve(name: str, port: int) -> None:
    import uvicorn

    # Idle connections stay open between runs: the client does not reconnect on its own.
    uvicorn.run(BenchOrigin(PROFILES[name]), host=HOST, port=port, log_level="warning", access_log=False,
                timeout_keep_alive=600)


@contextlib.contextmanager
def origins() -> Iterator[dict[str, str]]:
    """Every profile as a subprocess on a free port; yields name → URL; always stops them."""
    services: list[Service] = []
    with tempfile.TemporaryDirectory(prefix="balancer-bench-") as logs:
        try:
            for name in PROFILES:
                port = free_port()
                services.append(spawn(name, [sys.executable, __file__, "--serve", name, "--port", str(port)],
                                      Path(logs), port))
                wait_until_listening(services[-1:], START_TIMEOUT)
            yield {service.name: service.url for service in services}
        finally:
            stop_all(services)


# -- the load --------------------------------------------------------------------
def request_sequence(count: int, seed: int = 1) -> list[str]:
    """Paths of light and heavy requests for skewed objects; the same for every algorithm."""
    rng = random.Random(seed)
    paths = []
    for _ in range(count):
        kind = "heavy" if rng.random() < HEAVY_SHARE else "light"
        paths.append(f"/{kind}/{int(OBJECTS * rng.random() ** 2)}")  # squared: popular objects come up more
    return paths


class OriginClient:
    """Keep-alive HTTP/1.1 connections to one origin, reused one request at a time."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]] = []

    async def get(self, path: str) -> int:
        """Send `GET path`, read the whole response, and return its status."""
        if self.idle:
            reader, writer, conn = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            conn = h11.Connection(h11.CLIENT)
        writer.write(conn.send(h11.Request(method="GET", target=path, headers=[("host", self.host)]))
                     + conn.send(h11.EndOfMessage()))
        status = 0
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
        conn.start_next_cycle()
        self.idle.append((reader, writer, conn))
        return status

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


@dataclass
class Run:
    latencies: list[float]
    served_by: Counter[str]


async def run_algorithm(algorithm: AlgorithmName, urls: dict[str, str], paths: Sequence[str],
                        concurrency: int, clients: dict[str, OriginClient]) -> Run:
    """Send `paths` through a fresh pool at `concurrency`; latency is from pick to response body."""
    settings = PoolSettings.model_validate({
        "members": [{"url": url, "weight": PROFILES[name].weight} for name, url in urls.items()],
        "algorithm": algorithm, "health": {"interval": 0.1, "timeout": 1.0}})
    name_of = {url: name for name, url in urls.items()}
    run = Run([], Counter())
    queue = iter(paths)

    async def worker() -> None:
        for path in queue:
            started = time.perf_counter()
            member = pool.pick(key=path)
            if member is None:
                raise RuntimeError(f"{algorithm}: no member available")
            with pool.attempt(member) as attempt:
                attempt.responded(await clients[member.url].get(path))
            run.latencies.append(time.perf_counter() - started)
            run.served_by[name_of[member.url]] += 1

    async with OriginPool(settings) as pool:
        await asyncio.sleep(0.25)  # a couple of health rounds, so resource_based has reports
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return run


def percentile(values: Sequence[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


async def measure(requests: int, concurrency: int, rounds: int) -> dict[AlgorithmName, list[Run]]:
    paths = request_sequence(requests)
    runs: dict[AlgorithmName, list[Run]] = {a: [] for a in ALGORITHMS}
    with origins() as urls:
        clients = {url: OriginClient(url) for url in urls.values()}
        try:
            for client in clients.values():  # open connections before anything is measured
                await asyncio.gather(*(client.get("/light/0") for _ in range(concurrency)))
            for round_no in range(rounds):
                order = ALGORITHMS[round_no % len(ALGORITHMS):] + ALGORITHMS[:round_no % len(ALGORITHMS)]
                for algorithm in order:
                    print(f"  round {round_no + 1}/{rounds}: {algorithm} ...", file=sys.stderr, flush=True)
                    runs[algorithm].append(await run_algorithm(algorithm, urls, paths, concurrency, clients))
        finally:
            for client in clients.values():
                client.close()
    return runs


# -- report ----------------------------------------------------------------------
def report(runs: dict[AlgorithmName, list[Run]], requests: int, concurrency: int, rounds: int) -> None:
    """One row per algorithm: medians over rounds of p50 and p99, their ratio to round_robin, and shares."""
    def medians(algorithm: AlgorithmName) -> tuple[float, float]:
        rs = runs[algorithm]
        return (statistics.median(percentile(r.latencies, 50) for r in rs) * 1000,
                statistics.median(percentile(r.latencies, 99) for r in rs) * 1000)

    base_p50, base_p99 = medians("round_robin")
    header = ("algorithm", "p50 ms", "p99 ms", "p50 vs rr", "p99 vs rr", *PROFILES)
    rows = []
    for algorithm in ALGORITHMS:
        p50, p99 = medians(algorithm)
        served = sum((r.served_by for r in runs[algorithm]), Counter())
        total = sum(served.values())
        rows.append((algorithm, f"{p50:.1f}", f"{p99:.1f}", f"{p50 / base_p50:.2f}", f"{p99 / base_p99:.2f}",
                     *(f"{100 * served[name] / total:.0f}%" for name in PROFILES)))
    print(f"\n{requests} requests ({100 * HEAVY_SHARE:.0f}% heavy) at concurrency {concurrency}, median of {rounds} "
          f"round(s); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("origins: " + "; ".join(f"{name} {p.light * 1000:g}/{p.heavy * 1000:g} ms"
                                   f"{f', {p.workers} workers' if p.workers else ''}, weight {p.weight}"
                                   for name, p in PROFILES.items()))
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="requests per algorithm and round (default: 600)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once (default: 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, reported as medians (default: 3)")
    parser.add_argument("--serve", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill also stops the origins
    try:
        runs = asyncio.run(measure(args.requests, args.concurrency, args.rounds))
    except KeyboardInterrupt:
        print("balancer_bench: interrupted; the origins were stopped", file=sys.stderr)
        return 130
    report(runs, args.requests, args.concurrency, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
