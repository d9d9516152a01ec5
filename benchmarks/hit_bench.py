"""Edge cache hits against a bare ASGI app serving the same bytes on the same server stack.

Every target is a server started on a free loopback port in front of one shared
origin (`bytes_origin`), warmed, then loaded with wrk; the table gives each
target's requests/s and latency beside the baseline's, as a ratio. `--miss`
measures instead what the edge adds to a cache miss, against the bare origin.

    .venv/bin/python benchmarks/hit_bench.py [--quick | --duration S] [--rounds N] [--miss]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import httpx

from bytes_origin import path_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
WRK_THREADS = 1
WRK_CONNECTIONS = 64
MISS_REQUESTS = 500
QUICK_DURATION, QUICK_MISS_REQUESTS = 3, 100
MISS_WARMUP = 20  # first requests per object and path, not counted (connection set-up)
START_TIMEOUT = 20.0


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


@dataclass(frozen=True)
class BenchObject:
    """One cacheable body the targets serve."""

    label: str
    size: int

    @property
    def path(self) -> str:
        """Its URL path on every target."""
        return path_for(self.size)


OBJECTS = (BenchObject("1 KiB", 1024), BenchObject("100 KiB", 100 * 1024))

# (port, origin URL, scratch dir for config and logs) -> argv of a server in the foreground.
Command = Callable[[int, str, Path], list[str]]


@dataclass(frozen=True)
class Target:
    """A server to measure: how to start it in front of the origin, and how to tell its cache hits."""

    name: str
    command: Command
    is_hit: Callable[[httpx.Response], bool] | None = None  # None: not a cache, no hit to check


def cache_status_params(response: httpx.Response) -> set[str]:
    """The parameters of every cache in the Cache-Status field (RFC 9211), e.g. {"hit", "fwd=miss"}."""
    members = response.headers.get("cache-status", "").split(",")
    return {param.strip() for member in members for param in member.split(";")[1:]}


def bare_asgi(port: int, origin: str, scratch: Path) -> list[str]:
    """`bytes_origin` on uvicorn, with the server settings `cdn edge` uses (loop and http: auto)."""
    return [sys.executable, "-m", "uvicorn", "bytes_origin:app", "--app-dir", str(HERE),
            "--host", HOST, "--port", str(port), "--loop", "auto", "--http", "auto", "--lifespan", "off",
            "--no-date-header", "--no-server-header", "--no-access-log", "--log-level", "warning"]


def edge(port: int, origin: str, scratch: Path) -> list[str]:
    """The project's edge, as its CLI runs it (access log off: a benchmark measures serving, not logging)."""
    return [sys.executable, "-m", "cdn", "edge", "--host", HOST, "--port", str(port), "--origin", origin,
            "--no-access-log"]


def edge_without_shield(port: int, origin: str, scratch: Path) -> list[str]:
    """The same edge with the shield's rules and bans off: what the shield costs a hit."""
    return [*edge(port, origin, scratch), "--shield", '{"enabled": false}']


ORIGIN = Target("origin", bare_asgi)
EDGE = Target("edge hit", edge, is_hit=lambda response: "hit" in cache_status_params(response))
EDGE_NO_SHIELD = Target("edge hit, shield off", edge_without_shield,
                        is_hit=lambda response: "hit" in cache_status_params(response))
TARGETS = (Target("bare ASGI", bare_asgi), EDGE, EDGE_NO_SHIELD)  # the first is every ratio's baseline


# -- servers ------------------------------------------------------------------
def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def log_tail(log: Path, lines: int = 20) -> str:
    """The last lines of a server's log, for an error message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_until_listening(name: str, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Return once `port` accepts connections; fail if the server exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited with status {process.returncode} before listening:\n{log_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on port {port} within {START_TIMEOUT:.0f} s:\n{log_tail(log)}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it is still there after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5.0)
            return


@dataclass(frozen=True)
class Server:
    """A running target: its base URL, and its process group (its own session) for CPU accounting."""

    url: str
    pgid: int


@contextlib.contextmanager
def serving(target: Target, origin: str, scratch: Path) -> Iterator[Server]:
    """Run `target` on a free loopback port; yield it once it listens; always stop it."""
    workdir = scratch / target.name.replace(" ", "-")
    workdir.mkdir()
    port = free_port()
    log = workdir / "server.log"
    with log.open("wb") as out:
        # Its own session: Ctrl-C reaches only this script, which then stops the server itself.
        process = subprocess.Popen(target.command(port, origin, workdir), cwd=REPO, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_listening(target.name, process, port, log)
        yield Server(f"http://{HOST}:{port}", process.pid)
    finally:
        stop(process)


def warm(target: Target, url: str) -> None:
    """Fetch each object twice; the second answer must be the whole body and, from a cache, a hit."""
    with httpx.Client(base_url=url, trust_env=False, timeout=10.0) as client:
        for obj in OBJECTS:
            client.get(obj.path)
            second = client.get(obj.path)
            if second.status_code != 200 or len(second.content) != obj.size:
                raise BenchError(f"{target.name}: GET {obj.path} gave {second.status_code} with "
                                 f"{len(second.content)} bytes, expected 200 with {obj.size}")
            if target.is_hit is not None and not target.is_hit(second):
                raise BenchError(f"{target.name}: the second GET {obj.path} was not a cache hit: "
                                 f"{dict(second.headers)}")


# -- load ---------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # the server's CPU time (user + system, all its processes) per request
    errors: str  # wrk's socket-error and non-2xx lines; empty when there were none


MS_PER_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of the live processes in a process group, from Linux's /proc."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
            if int(fields[2]) == pgid:
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def ensure_wrk() -> None:
    """Install wrk with apt-get when it is missing (needs root)."""
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError("wrk is not installed and this is not root with apt-get: install it "
                         "(Debian/Ubuntu: `sudo apt-get install -y wrk`) and run again")
    print("wrk is missing: apt-get install -y wrk ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        done = subprocess.run(argv, check=False, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"`{' '.join(argv)}` failed, install wrk by hand:\n{done.stderr.strip()}")
    if not shutil.which("wrk"):
        raise BenchError("apt-get installed wrk but it is not on PATH")


def parse_wrk(report: str, server_cpu_s: float) -> Load:
    """Requests/s, p50 and p99 latency from the report of `wrk --latency`; CPU per request from its count."""
    count = re.search(r"^\s+(\d+) requests in ", report, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", report, re.MULTILINE)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", report, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", report, re.MULTILINE)
    if count is None or int(count[1]) == 0 or rate is None or p50 is None or p99 is None:
        raise BenchError(f"could not read wrk's report:\n{report}")
    errors = re.findall(r"^\s*(Socket errors: .*|Non-2xx or 3xx responses: \d+)\s*$", report, re.MULTILINE)
    return Load(float(rate[1]), float(p50[1]) * MS_PER_UNIT[p50[2]], float(p99[1]) * MS_PER_UNIT[p99[2]],
                server_cpu_s * 1e6 / int(count[1]), "; ".join(errors))


def run_wrk(server: Server, path: str, duration: int) -> Load:
    """Load `path` of `server` with wrk for `duration` seconds, counting the server's CPU time meanwhile."""
    url = server.url + path
    argv = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s", "--latency", url]
    cpu_before = group_cpu_seconds(server.pgid)
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=duration + 60)
    cpu = group_cpu_seconds(server.pgid) - cpu_before
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}) on {url}:\n{done.stderr or done.stdout}")
    return parse_wrk(done.stdout, cpu)


def measure_hits(duration: int, rounds: int, scratch: Path) -> dict[tuple[str, str], list[Load]]:
    """wrk's results per (object label, target name), one per round; all targets run, one is loaded at a time."""
    runs: dict[tuple[str, str], list[Load]] = {(obj.label, t.name): [] for obj in OBJECTS for t in TARGETS}
    with contextlib.ExitStack() as servers:
        origin = servers.enter_context(serving(ORIGIN, "", scratch))
        running = {target.name: servers.enter_context(serving(target, origin.url, scratch)) for target in TARGETS}
        for target in TARGETS:
            warm(target, running[target.name].url)
        # Rounds interleave the targets, so a noisy neighbour slows each of them alike.
        for round_no in range(1, rounds + 1):
            for obj in OBJECTS:
                for target in TARGETS:
                    print(f"  round {round_no}/{rounds}: {target.name}, {obj.label}, {duration} s of wrk ...",
                          file=sys.stderr, flush=True)
                    runs[obj.label, target.name].append(run_wrk(running[target.name], obj.path, duration))
    return runs


# -- misses -------------------------------------------------------------------
DIRECT, THROUGH_EDGE = "origin direct", "edge miss"


def measure_misses(count: int, scratch: Path) -> dict[str, dict[str, list[float]]]:
    """Per object label: latencies (ms) of `count` unique URLs from the origin directly and through the edge."""
    samples: dict[str, dict[str, list[float]]] = {obj.label: {DIRECT: [], THROUGH_EDGE: []} for obj in OBJECTS}
    with (serving(ORIGIN, "", scratch) as origin, serving(EDGE, origin.url, scratch) as edge,
          httpx.Client(trust_env=False, timeout=10.0) as client):
        for obj in OBJECTS:
            print(f"  {obj.label}: {count} unique URLs each way ...", file=sys.stderr, flush=True)
            for i in range(MISS_WARMUP + count):
                # Interleaved, so drift in the machine's load falls on both paths alike.
                for name, base in ((DIRECT, origin.url), (THROUGH_EDGE, edge.url)):
                    start = time.perf_counter()
                    response = client.get(f"{base}{obj.path}?bust={i}")
                    elapsed_ms = (time.perf_counter() - start) * 1000
                    if response.status_code != 200 or len(response.content) != obj.size:
                        raise BenchError(f"{name}: GET {obj.path}?bust={i} gave {response.status_code}")
                    if name == THROUGH_EDGE and "fwd=miss" not in cache_status_params(response):
                        raise BenchError(f"edge: GET {obj.path}?bust={i} was not a miss: {dict(response.headers)}")
                    if i >= MISS_WARMUP:
                        samples[obj.label][name].append(elapsed_ms)
    return samples


# -- report -------------------------------------------------------------------
def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns aligned: the first two (object, target) to the left, numbers to the right."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())


def stack_line(load_at_start: float) -> str:
    """The server stack both sides run on, and how busy the machine was (1-minute load average)."""
    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    http = "httptools" if find_spec("httptools") else "h11"
    return (f"uvicorn {version('uvicorn')} ({loop}, {http}), one process each; {os.cpu_count()} CPUs, "
            f"load {load_at_start:.1f} -> {os.getloadavg()[0]:.1f}")


def paired_ratio(ours: Sequence[float], theirs: Sequence[float]) -> str:
    """The median of each round's ours / theirs, with the range when there are several rounds."""
    ratios = [a / b for a, b in zip(ours, theirs)]
    text = f"{statistics.median(ratios):.2f}"
    return text + f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else text


def report_hits(runs: dict[tuple[str, str], list[Load]], duration: int, rounds: int, load_at_start: float) -> None:
    """Medians over the rounds, and each target's req/s and CPU per request beside the baseline's."""
    print(f"\nCache hits, wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{duration}s, median of {rounds} round(s); "
          f"{stack_line(load_at_start)}")
    baseline = TARGETS[0].name
    rows = []
    for obj in OBJECTS:
        base = runs[obj.label, baseline]
        for target in TARGETS:
            loads = runs[obj.label, target.name]
            if target.name == baseline:
                ratios = ("baseline", "baseline")
            else:
                ratios = (paired_ratio([load.requests_per_s for load in loads], [load.requests_per_s for load in base]),
                          paired_ratio([load.cpu_us for load in loads], [load.cpu_us for load in base]))
            rows.append((obj.label, target.name, f"{statistics.median(load.requests_per_s for load in loads):,.0f}",
                         f"{statistics.median(load.p50_ms for load in loads):.2f}",
                         f"{statistics.median(load.p99_ms for load in loads):.2f}",
                         f"{statistics.median(load.cpu_us for load in loads):.0f}", *ratios))
    print_table(("object", "target", "req/s", "p50 ms", "p99 ms", "CPU us/req",
                 f"req/s vs {baseline}", f"CPU/req vs {baseline}"), rows)
    for (label, name), loads in runs.items():
        for load in loads:
            if load.errors:
                print(f"warning: {label}, {name}: {load.errors} (its numbers count failed requests)")


def report_misses(samples: dict[str, dict[str, list[float]]], count: int, load_at_start: float) -> None:
    """p50 and p99 of each path, and what the edge adds to the direct fetch."""
    print(f"\nCache misses, {count} sequential GETs of unique URLs per path (httpx, keep-alive); "
          f"{stack_line(load_at_start)}")
    rows = []
    for label, by_path in samples.items():
        base = by_path[DIRECT]
        base_p50, base_p99 = statistics.median(base), statistics.quantiles(base, n=100)[98]
        for name, latencies in by_path.items():
            p50, p99 = statistics.median(latencies), statistics.quantiles(latencies, n=100)[98]
            added = ("baseline", "") if latencies is base else (f"{p50 - base_p50:+.2f}", f"{p99 - base_p99:+.2f}")
            rows.append((label, name, f"{p50:.2f}", f"{p99:.2f}", *added))
    print_table(("object", "path", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"), rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: run length and mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=int, default=10, help="seconds of wrk per target and object (default: 10)")
    length.add_argument("--quick", action="store_true",
                        help=f"smoke run: one round of {QUICK_DURATION} s wrk runs, {QUICK_MISS_REQUESTS} misses")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of hit runs, reported as medians (default: 3)")
    parser.add_argument("--miss", action="store_true",
                        help=f"instead of hits, the latency the edge adds to a miss ({MISS_REQUESTS} unique URLs)")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; 1 when it could not run, 130 when interrupted."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill also stops the servers
    load_at_start = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="hit-bench-") as scratch:
            if args.miss:
                count = QUICK_MISS_REQUESTS if args.quick else MISS_REQUESTS
                report_misses(measure_misses(count, Path(scratch)), count, load_at_start)
            else:
                ensure_wrk()
                duration, rounds = (QUICK_DURATION, 1) if args.quick else (args.duration, args.rounds)
                report_hits(measure_hits(duration, rounds, Path(scratch)), duration, rounds, load_at_start)
    except BenchError as exc:
        print(f"hit_bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hit_bench: interrupted; the servers were stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
