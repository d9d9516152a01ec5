"""Edge cache hits against nginx, Varnish and a bare ASGI app serving the same bytes on the same server.

Every target is a server started on a free loopback port in front of one shared
origin (`bytes_origin`), warmed, then loaded with wrk; one table gives each
target's requests/s, latency and CPU per request, the edge's ratios to nginx,
Varnish and the bare app, and whether the issue's goals are met. wrk, nginx and
Varnish are installed from Debian's packages when missing. `--miss` measures
instead what the edge adds to a cache miss, against the bare origin.

    .venv/bin/python benchmarks/hit_bench.py [--quick | --duration S] [--rounds N] [--large] [--miss]
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bytes_origin import MAX_SIZE, path_for  # noqa: E402
from benchmarks.processes import HOST, Service, ServiceStartError, free_port, spawn, wait_until_listening  # noqa: E402

NGINX_CONF = HERE / "hit_bench.nginx.conf"
WRK_THREADS = 1
WRK_CONNECTIONS = 64
MISS_REQUESTS = 500
QUICK_DURATION, QUICK_MISS_REQUESTS = 3, 100
MISS_WARMUP = 20  # first requests per object and path, not counted (connection set-up)
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
WARM_TIMEOUT = 30.0  # Varnish compiles its VCL with cc once it listens


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
LARGE_SIZE = 1024 * 1024  # --large's object by default: past `sendfile_from`, where the edge sends from a file


def large_object(size: int) -> BenchObject:
    """--large's object of `size` bytes, labelled in KiB or MiB."""
    return BenchObject(f"{size // (1024 * 1024)} MiB" if size % (1024 * 1024) == 0 else f"{size / 1024:g} KiB", size)

# (port, origin URL, scratch dir for config and logs) -> argv of a server in the foreground.
Command = Callable[[int, str, Path], list[str]]


@dataclass(frozen=True)
class Target:
    """A server to measure: how to start it in front of the origin, and how to tell its cache hits."""

    name: str
    command: Command
    is_hit: Callable[[httpx.Response], bool] | None = None  # None: not a cache, no hit to check
    server: str | None = None  # the ASGI server it runs on; None for nginx and Varnish
    cached: bool = False  # an edge: compared with the bare ASGI app on the same server


def cache_status_params(response: httpx.Response) -> set[str]:
    """The parameters of every cache in the Cache-Status field (RFC 9211), e.g. {"hit", "fwd=miss"}."""
    members = response.headers.get("cache-status", "").split(",")
    return {param.strip() for member in members for param in member.split(";")[1:]}


def edge_hit(response: httpx.Response) -> bool:
    """The edge says `hit` in Cache-Status."""
    return "hit" in cache_status_params(response)


def nginx_hit(response: httpx.Response) -> bool:
    """nginx's $upstream_cache_status, which the config adds as X-Cache-Status, is HIT."""
    return response.headers.get("x-cache-status") == "HIT"


def varnish_hit(response: httpx.Response) -> bool:
    """X-Varnish carries two transaction ids on a hit (this request's and the one that stored the object)."""
    return len(response.headers.get("x-varnish", "").split()) == 2


# Programs the hit benchmark runs, and the Debian package each comes in.
PACKAGES = {"wrk": "wrk", "nginx": "nginx", "varnishd": "varnish", "valgrind": "valgrind"}
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # nginx and varnishd live there, not always on PATH


def program(name: str) -> str | None:
    """The path of an installed program, also looking in the sbin directories."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


def installed(name: str) -> str:
    """The path of a program `ensure_programs` made sure of."""
    path = program(name)
    if path is None:
        raise BenchError(f"{name} is not installed")
    return path


def bare_asgi(port: int, origin: str, scratch: Path) -> list[str]:
    """`bytes_origin` on stock uvicorn (loop and http: auto): the origin behind every cache."""
    return [sys.executable, "-m", "uvicorn", "bytes_origin:app", "--app-dir", str(HERE),
            "--host", HOST, "--port", str(port), "--loop", "auto", "--http", "auto", "--lifespan", "off",
            "--no-date-header", "--no-server-header", "--no-access-log", "--log-level", "warning"]


# uvicorn as `cdn edge` runs it (cdn.http_server's protocol), so the bare app and the edge share a server.
ON_CDN_UVICORN = ("import sys; sys.path.insert(0, sys.argv[1]); from bytes_origin import app; import uvicorn; "
                  "from cdn.cli import uvicorn_options; from edge.settings import EdgeSettings; "
                  "options = uvicorn_options(EdgeSettings(log_level='warning'), proxy=True); "
                  "options['lifespan'] = 'off'; uvicorn.run(app, host=sys.argv[2], port=int(sys.argv[3]), **options)")


def bare_asgi_on_cdn_uvicorn(port: int, origin: str, scratch: Path) -> list[str]:
    """`bytes_origin` on uvicorn with the options and protocol `cdn edge` runs the edge with."""
    return [sys.executable, "-c", ON_CDN_UVICORN, str(HERE), HOST, str(port)]


# The function `cdn edge --server granian` runs its app with, so both sides get the same granian settings.
ON_GRANIAN = ("import sys; sys.path.insert(0, sys.argv[1]); from bytes_origin import app; "
              "from cdn.serving import run_granian; run_granian(app, sys.argv[2], int(sys.argv[3]), 'warning')")


def bare_asgi_on_granian(port: int, origin: str, scratch: Path) -> list[str]:
    """`bytes_origin` on granian's embedded server, started as `cdn edge --server granian` starts the edge."""
    return [sys.executable, "-c", ON_GRANIAN, str(HERE), HOST, str(port)]


def edge(port: int, origin: str, scratch: Path) -> list[str]:
    """The project's edge, as its CLI runs it (access log off: a benchmark measures serving, not logging)."""
    return [sys.executable, "-m", "cdn", "edge", "--host", HOST, "--port", str(port), "--origin", origin,
            "--no-access-log"]


def edge_without_shield(port: int, origin: str, scratch: Path) -> list[str]:
    """The same edge with the shield's rules and bans off: what the shield costs a hit."""
    return [*edge(port, origin, scratch), "--shield", '{"enabled": false}']


def edge_without_body_files(port: int, origin: str, scratch: Path) -> list[str]:
    """The same edge sending every body from memory: what sendfile(2) does for a large hit."""
    return [*edge(port, origin, scratch), "--sendfile-bytes", "0"]


def edge_with_body_files_only(port: int, origin: str, scratch: Path) -> list[str]:
    """The same edge sending every body it can from a file, however small: what copying does for a hit."""
    return [*edge(port, origin, scratch), "--sendfile-from", "1"]


# The shield's default origin rule (20 origin-bound requests/s per client IP) would refuse `--miss`'s
# unique URLs with 429; with its limit out of reach, the shield's decision stays on the miss path.
MISS_SHIELD = '{"rules": [{"name": "origin", "key": ["ip"], "scope": "origin", "rate": 1000000, "burst": 1000000}]}'


def edge_for_misses(port: int, origin: str, scratch: Path) -> list[str]:
    """The edge with the shield's origin-bound limit raised out of a benchmark's reach."""
    return [*edge(port, origin, scratch), "--shield", MISS_SHIELD]


def edge_on_granian(port: int, origin: str, scratch: Path) -> list[str]:
    """The same edge on granian instead of uvicorn."""
    return [*edge(port, origin, scratch), "--server", "granian"]


def nginx(port: int, origin: str, scratch: Path, sendfile: str = "on") -> list[str]:
    """nginx with one worker and proxy_cache (`hit_bench.nginx.conf`), everything it writes in `scratch`."""
    values = {"USER": pwd.getpwuid(os.geteuid()).pw_name, "GROUP": grp.getgrgid(os.getegid()).gr_name,
              "SCRATCH": str(scratch), "ORIGIN": origin.removeprefix("http://"), "HOST": HOST, "PORT": str(port),
              "SENDFILE": sendfile}
    template = NGINX_CONF.read_text()
    if unknown := set(re.findall(r"@([A-Z]+)@", template)) - set(values):
        raise BenchError(f"{NGINX_CONF.name} has placeholders hit_bench does not fill in: {sorted(unknown)}")
    conf = re.sub(r"@([A-Z]+)@", lambda match: values[match[1]], template)
    (scratch / "nginx.conf").write_text(conf)
    # -e: the error log from the start (before the config is read, nginx would open /var/log/nginx/).
    return [installed("nginx"), "-p", f"{scratch}/", "-e", str(scratch / "error.log"),
            "-c", str(scratch / "nginx.conf")]


def nginx_without_sendfile(port: int, origin: str, scratch: Path) -> list[str]:
    """The same nginx copying every body into the socket (`sendfile off`)."""
    return nginx(port, origin, scratch, sendfile="off")


VARNISH_PARAMS = ("thread_pools=1",)  # the nearest Varnish comes to one worker; see VARNISH_NOTE


def varnish(port: int, origin: str, scratch: Path) -> list[str]:
    """varnishd in the foreground with the built-in VCL in front of the origin, its working dir in `scratch`."""
    params = [arg for param in VARNISH_PARAMS for arg in ("-p", param)]
    return [installed("varnishd"), "-F", "-a", f"{HOST}:{port}", "-b", origin.removeprefix("http://"),
            "-n", str(scratch / "varnishd"), "-T", f"{HOST}:0", "-s", "malloc,256m", *params]


ORIGIN = Target("origin", bare_asgi)
MISS_EDGE = Target("edge", edge_for_misses)
NGINX = Target("nginx proxy_cache", nginx, is_hit=nginx_hit)
# On some kernels nginx serves small cached files faster copying them than with sendfile: each object's
# reference is whichever of the two served it faster (`fastest_nginx`).
NGINX_COPYING = Target("nginx proxy_cache, sendfile off", nginx_without_sendfile, is_hit=nginx_hit)
VARNISH = Target("Varnish", varnish, is_hit=varnish_hit)
EDGE = Target("edge, uvicorn", edge, is_hit=edge_hit, server="uvicorn", cached=True)
EDGE_GRANIAN = Target("edge, granian", edge_on_granian, is_hit=edge_hit, server="granian", cached=True)
TARGETS = (
    NGINX,
    NGINX_COPYING,
    VARNISH,
    Target("bare ASGI, uvicorn", bare_asgi_on_cdn_uvicorn, server="uvicorn"),
    EDGE,
    Target("edge, uvicorn, shield off", edge_without_shield, is_hit=edge_hit, server="uvicorn", cached=True),
    Target("bare ASGI, granian", bare_asgi_on_granian, server="granian"),
    EDGE_GRANIAN,
)
# With --large: the edge sending no body from a file, and every body from one: what sendfile(2) does for each
# size (the edge as shipped sends from `sendfile_from` on from a file).
EDGE_SENDFILE_TARGETS = (
    Target("edge, uvicorn, sendfile off", edge_without_body_files, is_hit=edge_hit, server="uvicorn", cached=True),
    Target("edge, uvicorn, sendfile always", edge_with_body_files_only, is_hit=edge_hit, server="uvicorn",
           cached=True),
)
GOAL_EDGES = (EDGE, EDGE_GRANIAN)  # the edges as shipped (shield on), one per server

VARNISH_NOTE = (
    "Varnish runs with one thread pool (-p thread_pools=1), the nearest it comes to nginx's one worker: "
    "it serves each connection on a thread of its own, and has no setting that holds it to one core as "
    "one nginx worker or one Python process is held. With wrk busy on one of the machine's two cores, "
    "that matters less than it sounds; CPU us/req compares the work per hit either way.")


@dataclass(frozen=True)
class Goal:
    """One of the issue's goals for the edge, as a bound on a ratio to a reference target."""

    label: str
    object_label: str
    metric: str  # "req/s" (at least `bound` times the reference's) or "p99" (at most `bound` times)
    reference: str  # "nginx" (its faster config for the object), or "bare": the bare ASGI app on the edge's server
    bound: float


GOALS = (
    Goal("1 KiB hits, req/s >= 0.80x nginx's", "1 KiB", "req/s", "nginx", 0.80),
    Goal("100 KiB hits, req/s >= 0.90x nginx's", "100 KiB", "req/s", "nginx", 0.90),
    Goal("1 KiB hits, req/s >= 0.85x bare ASGI's (same server)", "1 KiB", "req/s", "bare", 0.85),
    Goal("100 KiB hits, req/s >= 0.85x bare ASGI's (same server)", "100 KiB", "req/s", "bare", 0.85),
    Goal(f"1 KiB hits, p99 at {WRK_CONNECTIONS} connections <= 1.5x nginx's", "1 KiB", "p99", "nginx", 1.5),
    Goal(f"100 KiB hits, p99 at {WRK_CONNECTIONS} connections <= 1.5x nginx's", "100 KiB", "p99", "nginx", 1.5),
)


# -- servers ------------------------------------------------------------------
def session_processes(sid: int) -> dict[int, int]:
    """Live (not zombie) processes of a session, from Linux's /proc: pid -> user + system CPU ticks."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):  # a process that ended meanwhile
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, session, ...
            if int(fields[3]) == sid and fields[0] != "Z":
                found[int(stat.parent.name)] = int(fields[11]) + int(fields[12])  # utime, stime
    return found


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends, so a second Ctrl-C cannot cut a clean-up short."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group; SIGKILL whatever is left of its session after STOP_TIMEOUT."""
    with signals_held():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        # nginx's master waits for its worker and varnishd's manager for its child; wait for the session to empty.
        deadline = time.monotonic() + STOP_TIMEOUT
        while (process.poll() is None or session_processes(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in session_processes(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def serving(target: Target, origin: str, scratch: Path) -> Iterator[Service]:
    """Run `target` on a free loopback port; yield it once it listens; always stop it."""
    workdir = scratch / re.sub(r"[^A-Za-z0-9]+", "-", target.name)
    workdir.mkdir()
    port = free_port()
    server = spawn(target.name, target.command(port, origin, workdir), workdir, port)
    try:
        wait_until_listening([server], START_TIMEOUT)
        yield server
    finally:
        stop(server.process)


def warm(target: Target, server: Service, objects: Sequence[BenchObject] = OBJECTS) -> None:
    """Fetch each object twice; the second answer must be the whole body and, from a cache, a hit."""
    with httpx.Client(base_url=server.url, trust_env=False, timeout=WARM_TIMEOUT) as client:
        for obj in objects:
            try:
                client.get(obj.path)
                second = client.get(obj.path)
            except httpx.HTTPError as exc:
                raise BenchError(f"{target.name}: GET {obj.path} failed ({exc!r}); its log:\n"
                                 f"{server.log_tail()}") from exc
            if second.status_code != 200 or len(second.content) != obj.size:
                raise BenchError(f"{target.name}: GET {obj.path} gave {second.status_code} with "
                                 f"{len(second.content)} bytes, expected 200 with {obj.size}")
            if target.is_hit is not None and not target.is_hit(second):
                raise BenchError(f"{target.name}: the second GET {obj.path} was not a cache hit: "
                                 f"{dict(second.headers)}")


def ensure_programs(names: Sequence[str]) -> None:
    """Install the Debian packages of the programs in `names` that are missing, with apt-get (needs root)."""
    missing = [name for name in names if program(name) is None]
    if not missing:
        return
    packages = [PACKAGES[name] for name in missing]
    command = f"apt-get install -y --no-install-recommends {' '.join(packages)}"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"{', '.join(missing)} not installed, and this is not root with apt-get: install "
                         f"{'it' if len(missing) == 1 else 'them'} (Debian/Ubuntu: `sudo {command}`) and run again")
    print(f"{', '.join(missing)} missing: {command} ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], command.split()):
        done = subprocess.run(argv, check=False, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"`{' '.join(argv)}` failed; install {', '.join(packages)} by hand:\n"
                             f"{done.stderr.strip()}")
    if still := [name for name in missing if program(name) is None]:
        raise BenchError(f"apt-get installed {', '.join(packages)} but {', '.join(still)} cannot be found")


def program_version(name: str) -> str:
    """`nginx/1.22.1`, `varnish-7.1.1`: the version a program prints about itself (both print it on stderr)."""
    flag = {"nginx": "-v", "varnishd": "-V"}[name]
    done = subprocess.run([installed(name), flag], check=False, capture_output=True, text=True)
    found = re.search(r"(nginx/\S+|varnish-[\d.]+)", done.stderr + done.stdout)
    return found[1] if found else f"{name} (version unknown)"


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


def session_cpu_seconds(sid: int) -> float:
    """User + system CPU time of the live processes of a session (a server and all it started)."""
    return sum(session_processes(sid).values()) / os.sysconf("SC_CLK_TCK")


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


def run_wrk(server: Service, path: str, duration: int) -> Load:
    """Load `path` of `server` with wrk for `duration` seconds, counting the server's CPU time meanwhile."""
    url = server.url + path
    argv = [installed("wrk"), f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s", "--latency", url]
    cpu_before = session_cpu_seconds(server.pid)
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=duration + 60)
    cpu = session_cpu_seconds(server.pid) - cpu_before
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}) on {url}:\n{done.stderr or done.stdout}")
    return parse_wrk(done.stdout, cpu)


def measure_hits(duration: int, rounds: int, scratch: Path, objects: Sequence[BenchObject] = OBJECTS,
                 targets: Sequence[Target] = TARGETS) -> dict[tuple[str, str], list[Load]]:
    """wrk's results per (object label, target name), one per round; all targets run, one is loaded at a time."""
    runs: dict[tuple[str, str], list[Load]] = {(obj.label, t.name): [] for obj in objects for t in targets}
    with contextlib.ExitStack() as servers:
        origin = servers.enter_context(serving(ORIGIN, "", scratch))
        running = {target.name: servers.enter_context(serving(target, origin.url, scratch)) for target in targets}
        for target in targets:
            warm(target, running[target.name], objects)
        # Rounds interleave the targets, so a noisy neighbour slows each of them alike; each round starts
        # one target later, so none is always the one that runs after a given other.
        for round_no in range(rounds):
            order = [*targets[round_no % len(targets):], *targets[:round_no % len(targets)]]
            for obj in objects:
                for target in order:
                    print(f"  round {round_no + 1}/{rounds}: {target.name}, {obj.label}, {duration} s of wrk ...",
                          file=sys.stderr, flush=True)
                    runs[obj.label, target.name].append(run_wrk(running[target.name], obj.path, duration))
    return runs


# -- misses -------------------------------------------------------------------
DIRECT, THROUGH_EDGE = "origin direct", "edge miss"


def measure_misses(count: int, scratch: Path) -> dict[str, dict[str, list[float]]]:
    """Per object label: latencies (ms) of `count` unique URLs from the origin directly and through the edge."""
    samples: dict[str, dict[str, list[float]]] = {obj.label: {DIRECT: [], THROUGH_EDGE: []} for obj in OBJECTS}
    with (serving(ORIGIN, "", scratch) as origin, serving(MISS_EDGE, origin.url, scratch) as edge,
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
def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 2) -> None:
    """Columns aligned: the first `text_columns` (names) to the left, the others (numbers) to the right."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [cell.ljust(w) if i < text_columns else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip())


def stack_line(load_at_start: float, competitors: bool = False) -> str:
    """The server stacks measured, and how busy the machine was (1-minute load average)."""
    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    http = "httptools" if find_spec("httptools") else "h11"
    stacks = f"uvicorn {version('uvicorn')} ({loop}, {http})"
    if competitors:
        stacks += (f", granian {version('granian')} (embedded, one runtime thread), "
                   f"{program_version('nginx')}, {program_version('varnishd')}")
    return (f"{stacks}; one process or worker each; {os.cpu_count()} CPUs, "
            f"load {load_at_start:.1f} -> {os.getloadavg()[0]:.1f}")


def per_round_ratios(ours: Sequence[Load], theirs: Sequence[Load], metric: str) -> list[float]:
    """Each round's ours / theirs of req/s or p99 (rounds run the targets close together, so they pair up)."""
    value: Callable[[Load], float] = (lambda load: load.requests_per_s) if metric == "req/s" else (
        lambda load: load.p99_ms)
    return [value(a) / value(b) for a, b in zip(ours, theirs)]


def ratio_text(ratios: Sequence[float], with_range: bool = False) -> str:
    """The median of the per-round ratios; with their range when asked and there are several rounds."""
    text = f"{statistics.median(ratios):.2f}x"
    return text + f" ({min(ratios):.2f}-{max(ratios):.2f})" if with_range and len(ratios) > 1 else text


def bare_on(server: str | None) -> Target | None:
    """The bare ASGI app on `server`, the baseline an edge on that server is held to."""
    return next((t for t in TARGETS if server is not None and t.server == server and not t.cached), None)


def fastest_nginx(runs: dict[tuple[str, str], list[Load]], label: str) -> Target:
    """The nginx config (sendfile on or off) that served the object `label` faster, by median req/s."""
    return max((NGINX, NGINX_COPYING),
               key=lambda target: statistics.median(load.requests_per_s for load in runs[label, target.name]))


def hit_row(runs: dict[tuple[str, str], list[Load]], label: str, target: Target) -> tuple[str, ...]:
    """One target's medians and its ratios to nginx, Varnish and the bare app on its server ('-': not its own)."""
    loads = runs[label, target.name]

    def ratio(reference: Target | None, metric: str = "req/s") -> str:
        if reference is None or reference is target:
            return "-"
        return ratio_text(per_round_ratios(loads, runs[label, reference.name], metric))

    return (label, target.name, f"{statistics.median(load.requests_per_s for load in loads):,.0f}",
            f"{statistics.median(load.p50_ms for load in loads):.2f}",
            f"{statistics.median(load.p99_ms for load in loads):.2f}",
            f"{statistics.median(load.cpu_us for load in loads):.0f}",
            ratio(nginx := fastest_nginx(runs, label)), ratio(VARNISH),
            ratio(bare_on(target.server) if target.cached else None), ratio(nginx, "p99"))


def goal_cell(runs: dict[tuple[str, str], list[Load]], goal: Goal, edge_target: Target) -> str:
    """`0.83x (0.79-0.88) met`: an edge's median ratio for a goal, its range, and whether the median meets it."""
    reference = fastest_nginx(runs, goal.object_label) if goal.reference == "nginx" else bare_on(edge_target.server)
    assert reference is not None, f"no bare ASGI target on {edge_target.server}"
    ratios = per_round_ratios(runs[goal.object_label, edge_target.name], runs[goal.object_label, reference.name],
                              goal.metric)
    median = statistics.median(ratios)
    met = median >= goal.bound if goal.metric == "req/s" else median <= goal.bound
    return f"{ratio_text(ratios, with_range=True)} {'met' if met else 'NOT met'}"


def report_hits(runs: dict[tuple[str, str], list[Load]], targets: Sequence[Target], duration: int, rounds: int,
                load_at_start: float) -> None:
    """Medians over the rounds, the ratios of each target to nginx, Varnish and its bare app, and the goals."""
    print(f"\nCache hits, wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{duration}s, median of {rounds} round(s); "
          f"{stack_line(load_at_start, competitors=True)}")
    labels = list(dict.fromkeys(label for label, _ in runs))
    configs = "; ".join(f"{label}: sendfile {'off' if fastest_nginx(runs, label) is NGINX_COPYING else 'on'}"
                        for label in labels)
    print(textwrap.fill("Ratios are the median of the per-round ratios: req/s against nginx, Varnish and the bare "
                        "ASGI app on the same server, and p99 against nginx's. nginx is, per object, the config "
                        f"that served it faster ({configs}).", width=110) + "\n")
    rows = [hit_row(runs, label, target) for label in labels for target in targets]
    print_table(("object", "target", "req/s", "p50 ms", "p99 ms", "CPU us/req",
                 "vs nginx", "vs Varnish", "vs bare, same server", "p99 vs nginx"), rows)
    print()
    print_table(("goal (median of the per-round ratios, range)", *(t.name for t in GOAL_EDGES)),
                [(goal.label, *(goal_cell(runs, goal, t) for t in GOAL_EDGES)) for goal in GOALS], text_columns=1)
    print(f"\nnginx ({NGINX_CONF.name}): worker_processes 1, proxy_cache on disk (so from the page cache), "
          "sendfile on (but for the one with sendfile off), tcp_nopush off (see the config), keep-alive to the origin.")
    print(textwrap.fill(VARNISH_NOTE, width=110))
    print("The edge and the bare app: one process each; granian with one runtime thread, as `cdn edge --server "
          "granian` runs it.")
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
    parser.add_argument("--large", type=int, nargs="?", const=LARGE_SIZE, metavar="BYTES",
                        help=f"hits of a larger object too (default {LARGE_SIZE} bytes; the goals are for the "
                             "others), and edges with sendfile off and always on")
    parser.add_argument("--miss", action="store_true",
                        help=f"instead of hits, the latency the edge adds to a miss ({MISS_REQUESTS} unique URLs)")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    if args.large is not None and not OBJECTS[-1].size < args.large <= MAX_SIZE:
        parser.error(f"--large takes a size above {OBJECTS[-1].size} bytes and at most {MAX_SIZE}")
    return args


def interrupted(signum: int, frame: object) -> None:
    """Raise KeyboardInterrupt once; ignore the signals that follow, so the clean-up runs to its end."""
    for held in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(held, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; 1 when it could not run, 130 when interrupted."""
    args = parse_args(argv)
    stop_on = [signal.SIGTERM, signal.SIGHUP]  # a kill or a closed terminal also stops the servers
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with Ctrl-C ignored
        stop_on.append(signal.SIGINT)
    for signum in stop_on:
        signal.signal(signum, interrupted)
    load_at_start = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="hit-bench-") as scratch:
            if args.miss:
                count = QUICK_MISS_REQUESTS if args.quick else MISS_REQUESTS
                report_misses(measure_misses(count, Path(scratch)), count, load_at_start)
            else:
                ensure_programs(list(PACKAGES))
                duration, rounds = (QUICK_DURATION, 1) if args.quick else (args.duration, args.rounds)
                objects, targets = (OBJECTS, TARGETS)
                if args.large:
                    objects, targets = (*OBJECTS, large_object(args.large)), (*TARGETS, *EDGE_SENDFILE_TARGETS)
                runs = measure_hits(duration, rounds, Path(scratch), objects, targets)
                report_hits(runs, targets, duration, rounds, load_at_start)
    except (BenchError, ServiceStartError) as exc:
        print(f"hit_bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hit_bench: interrupted; the servers were stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
