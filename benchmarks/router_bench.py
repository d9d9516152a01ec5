"""What the front door costs: cache hits through `cdn router` beside the same hits straight from the edge.

An origin (`bytes_origin`, a 1 KiB cacheable body), one `cdn edge` in front of
it and one `cdn router` in front of the edge run as subprocesses on free
loopback ports. The object is warmed so both paths answer from the edge's cache
(the edge key includes Host, and both paths send the same one). Then
`wrk -t1 -c32 -d<duration>s --latency` loads one path at a time, rounds
interleaving the two; the table gives medians, the router path's ratios to the
direct one, and each server's CPU time per request.

    .venv/bin/python benchmarks/router_bench.py [--quick | --duration S] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from hit_bench import (
    EDGE,
    ORIGIN,
    BenchError,
    Load,
    Target,
    cache_status_params,
    ensure_programs,
    parse_wrk,
    print_table,
    serving,
    session_cpu_seconds,
    stack_line,
)

from benchmarks.processes import Service
from bytes_origin import path_for

HOST_HEADER = "bench.example"  # both paths send it, so both hit the edge's one cache entry
CLIENT_REGION = "eu-west"
WRK_THREADS, WRK_CONNECTIONS = 1, 32
QUICK_DURATION = 3
OBJECT = path_for(1024)
DIRECT, ROUTED = "edge direct", "router -> edge"


def router(port: int, edge_url: str, scratch: Path) -> list[str]:
    """The front door as its CLI runs it, with the one edge in eu-west."""
    edges = json.dumps([{"url": edge_url, "id": "edge-1", "region": "eu-west"}])
    return [sys.executable, "-m", "cdn", "router", "--host", "127.0.0.1", "--port", str(port), "--edges", edges]


ROUTER = Target("router", router)


def warm(url: str, routed: bool) -> None:
    """GET the object until it is a hit; through the router it must also say where it went."""
    with httpx.Client(trust_env=False, timeout=10.0, headers={"Host": HOST_HEADER, "X-Client-Region": CLIENT_REGION}) as client:
        for _ in range(2):
            response = client.get(url + OBJECT)
        if response.status_code != 200 or len(response.content) != 1024 or "hit" not in cache_status_params(response):
            raise BenchError(f"GET {url}{OBJECT} is not a 1 KiB cache hit: {response.status_code} {dict(response.headers)}")
        if routed and "edge-1; region=eu-west" not in response.headers.get("x-routed-to", ""):
            raise BenchError(f"the router did not say where it sent the request: {dict(response.headers)}")


@dataclass(frozen=True)
class Run:
    """One wrk run and the CPU time each server spent on it, per request."""

    load: Load
    edge_cpu_us: float
    router_cpu_us: float


def paired_ratio(ours: Sequence[float], theirs: Sequence[float]) -> str:
    """The median of each round's ours / theirs, with the range when there are several rounds."""
    ratios = [a / b for a, b in zip(ours, theirs)]
    text = f"{statistics.median(ratios):.2f}"
    return text + f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else text


def run_wrk(url: str, duration: int, edge: Service, front: Service) -> Run:
    """Load `url` with wrk, counting the edge's and the router's CPU time meanwhile."""
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s", "--latency",
            "-H", f"Host: {HOST_HEADER}", "-H", f"X-Client-Region: {CLIENT_REGION}", url + OBJECT]
    before = session_cpu_seconds(edge.pid), session_cpu_seconds(front.pid)
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=duration + 60)
    edge_cpu, router_cpu = session_cpu_seconds(edge.pid) - before[0], session_cpu_seconds(front.pid) - before[1]
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}) on {url}:\n{done.stderr or done.stdout}")
    load = parse_wrk(done.stdout, 0.0)
    requests = load.requests_per_s * duration
    return Run(load, edge_cpu * 1e6 / requests, router_cpu * 1e6 / requests)


def measure(duration: int, rounds: int, scratch: Path) -> dict[str, list[Run]]:
    """wrk runs per path, one per round, the paths alternating."""
    runs: dict[str, list[Run]] = {DIRECT: [], ROUTED: []}
    with serving(ORIGIN, "", scratch) as origin, serving(EDGE, origin.url, scratch) as edge, \
            serving(ROUTER, edge.url, scratch) as front:
        warm(edge.url, routed=False)
        warm(front.url, routed=True)
        for round_no in range(1, rounds + 1):
            for name, url in ((DIRECT, edge.url), (ROUTED, front.url)):
                print(f"  round {round_no}/{rounds}: {name}, {duration} s of wrk ...", file=sys.stderr, flush=True)
                runs[name].append(run_wrk(url, duration, edge, front))
    return runs


def report(runs: dict[str, list[Run]], duration: int, rounds: int, load_at_start: float) -> None:
    """Medians per path, the router path's ratios to the direct one, and the latency it adds."""
    print(f"\n1 KiB cache hits, wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{duration}s, median of {rounds} round(s); "
          f"{stack_line(load_at_start)}")
    base = runs[DIRECT]
    rows = []
    for name, path_runs in runs.items():
        loads = [run.load for run in path_runs]
        p50 = statistics.median(load.p50_ms for load in loads)
        p99 = statistics.median(load.p99_ms for load in loads)
        if path_runs is base:
            ratios = ("baseline", "baseline", "baseline", "")
        else:
            base_loads = [run.load for run in base]
            ratios = (paired_ratio([x.requests_per_s for x in loads], [x.requests_per_s for x in base_loads]),
                      paired_ratio([x.p50_ms for x in loads], [x.p50_ms for x in base_loads]),
                      paired_ratio([x.p99_ms for x in loads], [x.p99_ms for x in base_loads]),
                      f"{p50 - statistics.median(x.p50_ms for x in base_loads):+.2f}")
        rows.append((name, "", f"{statistics.median(load.requests_per_s for load in loads):,.0f}", f"{p50:.2f}",
                     f"{p99:.2f}", *ratios,
                     f"{statistics.median(run.edge_cpu_us for run in path_runs):.0f}",
                     f"{statistics.median(run.router_cpu_us for run in path_runs):.0f}"))
    print_table(("path", "", "req/s", "p50 ms", "p99 ms", "req/s ratio", "p50 ratio", "p99 ratio", "added p50 ms",
                 "edge CPU us/req", "router CPU us/req"), rows)
    for name, path_runs in runs.items():
        for run in path_runs:
            if run.load.errors:
                print(f"warning: {name}: {run.load.errors} (its numbers count failed requests)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: run length and rounds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=int, default=5, help="seconds of wrk per path and round (default: 5)")
    length.add_argument("--quick", action="store_true", help=f"smoke run: one round of {QUICK_DURATION} s runs")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, reported as medians (default: 3)")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; 1 when it could not run, 130 when interrupted."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill also stops the servers
    load_at_start = os.getloadavg()[0]
    duration, rounds = (QUICK_DURATION, 1) if args.quick else (args.duration, args.rounds)
    try:
        ensure_programs(["wrk"])
        with tempfile.TemporaryDirectory(prefix="router-bench-") as scratch:
            report(measure(duration, rounds, Path(scratch)), duration, rounds, load_at_start)
    except BenchError as exc:
        print(f"router_bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("router_bench: interrupted; the servers were stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
