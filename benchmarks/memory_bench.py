"""Memory: what a cached object costs beyond its body and headers, and the edge's RSS under a long run of unique objects.

Issue #10's goals: per cached object at most a few hundred bytes beyond its
body and headers; process memory within 1.1x the configured cache size plus a
constant under a long run of unique objects.

1. Per object, in process. Responses go through the edge's own code
   (`ClientRequest.from_scope`, `Edge.make_entry`, `Edge.put`) into a store of
   `--objects` entries per row (bodies of 0 B, 100 B and 1 KiB; realistic
   headers, with and without two surrogate keys). tracemalloc gives the bytes
   each object keeps beyond its body and header bytes, beside a plain dict
   `key -> (header pairs, body)` holding the same bytes (the baseline), and
   beside what the store charges against its capacity (`Entry.size`). A fresh
   interpreter per row also gives the RSS each object adds (allocator rounding
   included), without tracemalloc. The row with the most overhead is measured
   again where the store's dicts have just grown (a key costs its dict 21 to
   43 B as it fills), and the goal is judged on the more of the two.
2. Process memory. A small origin (`origin_app` below, on uvicorn) serves unique
   objects of mixed sizes; `python -m cdn edge` runs in front of it, each a
   subprocess on a free loopback port. An h11 client sends unique GETs totalling
   `--factor` times the cache size, the same sequence through an edge with the
   cache size under test and one with a small cache (the baseline: what the
   process costs besides its cache). Every second the edge's VmRSS (/proc, so
   Linux only) and its store (`/_edge/stats`) are sampled.

    .venv/bin/python benchmarks/memory_bench.py            # 20,000 objects a row; 64 MiB vs 8 MiB caches, 4x traffic
    .venv/bin/python benchmarks/memory_bench.py --quick    # 5,000 objects a row; 16 MiB vs 4 MiB caches, 2x traffic
    .venv/bin/python benchmarks/memory_bench.py --cache-size 128 --small-cache 8 --factor 3 --mix small
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import gc
import json
import linecache
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.h11_client import ConnectionClosed, HttpConnection  # noqa: E402
from benchmarks.processes import (  # noqa: E402
    HOST,
    Service,
    ServiceStartError,
    free_port,
    spawn,
    stop_all,
    wait_until_listening,
)
from edge.app import ClientRequest, Edge  # noqa: E402
from edge.headers import Headers  # noqa: E402
from edge.settings import EdgeSettings  # noqa: E402
from edge.store import BLOCK_OVERHEAD, ENTRY_OVERHEAD, TAG_OVERHEAD  # noqa: E402

SITE = "memory.example"  # the Host every request carries
ADMIN_TOKEN = "memory-bench-admin"
MIB = 1024 * 1024
START_TIMEOUT = 30.0
CONCURRENCY = 16  # keep-alive connections to the edge
SAMPLE_EVERY = 1.0  # seconds
SETTLE = 2.0  # seconds idle before the empty and the end samples

GOAL_OVERHEAD = 500  # "a few hundred bytes" per object, read generously
GOAL_PROCESS = 1.1  # RSS growth per byte of configured cache size

ROW_SIZES = (0, 100, 1024)
# Body sizes of the unique objects and their weights. `mixed`: mean about 9 KiB, a third of the
# objects 100 B; `small`: where the per-object cost decides everything.
MIXES = {
    "mixed": ((100, 3), (1024, 3), (4096, 2), (16384, 1), (65536, 1)),
    "small": ((100, 1), (1024, 1)),
}
LAST_MODIFIED = "Tue, 05 May 2026 10:00:00 GMT"
# How long each fetch took: its delay is in the entry's initial age, a float of the entry's own (RFC 9111 §4.2.3).
FETCH_SECONDS = 0.0004


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


# -- the origin: unique cacheable objects with realistic headers --------------------------------------
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_BODIES: dict[int, bytes] = {}


def response_headers(number: int, size: int, tagged: bool) -> list[tuple[bytes, bytes]]:
    """What a typical static-object origin sends (uvicorn adds Date and Server on the wire)."""
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(size).encode()),
        (b"cache-control", b"public, max-age=3600"),
        (b"etag", f'"{number:016x}"'.encode()),
        (b"last-modified", LAST_MODIFIED.encode()),
    ]
    if tagged:
        headers.append((b"surrogate-key", f"objects obj-{number}".encode()))
    return headers


async def origin_app(scope: Scope, receive: Receive, send: Send) -> None:
    """`GET /obj/<n>?size=<bytes>`: `size` bytes, cacheable for an hour, tagged `objects obj-<n>`."""
    if scope["type"] != "http":
        return
    number = scope["path"].removeprefix("/obj/")
    query = scope["query_string"].decode()
    size = int(query.removeprefix("size=")) if query.startswith("size=") and query[5:].isdigit() else -1
    if not number.isdigit() or not 0 <= size <= 16 * MIB:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    body = _BODIES.get(size)
    if body is None:
        body = _BODIES[size] = b"x" * size
    await send({"type": "http.response.start", "status": 200, "headers": response_headers(int(number), size, True)})
    await send({"type": "http.response.body", "body": body})


# -- 1. per object, in process ---------------------------------------------------------------------
@dataclass
class Row:
    """Bytes per object for one body size and header set."""

    body: int
    tagged: bool
    content: float  # body + header bytes, as the store counts them
    charged: float  # Entry.size: what the store counts against its capacity
    ours: float  # traced bytes the edge keeps per object (body included)
    pairs: float  # traced bytes of the baseline dict holding the header fields as byte pairs
    block: float  # traced bytes of the baseline dict holding the header fields as one raw block
    rss: float = 0.0  # RSS per object in a fresh interpreter, no tracemalloc
    sites: list[tuple[str, float]] = field(default_factory=list)  # where `ours` goes: (site, bytes per object)

    @property
    def label(self) -> str:
        return f"{self.body} B, {'2 tags' if self.tagged else 'no tags'}"

    @property
    def overhead(self) -> float:
        return self.ours - self.content


class EntryFactory:
    """Builds stored entries the way the edge does on a miss, from a scope and an origin's header list."""

    def __init__(self) -> None:
        self.settings = EdgeSettings(cache_size=1 << 40, access_log=False, metrics=False)
        self.edge = Edge(self.settings)

    def request(self, number: int) -> ClientRequest:
        path = f"/obj/{number}"
        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "client": (HOST, 40000),
                 "headers": [(b"host", SITE.encode()), (b"user-agent", b"memory-bench/1"),
                             (b"accept", b"*/*"), (b"accept-encoding", b"gzip, br")]}
        return ClientRequest.from_scope(scope, self.settings)

    def received(self, number: int, size: int, tagged: bool) -> tuple[Headers, bytes]:
        """Header fields and body as they arrive from the origin, dated now: decoded fields, a fresh body."""
        raw = response_headers(number, size, tagged)
        raw += [(b"date", email.utils.formatdate(usegmt=True).encode()), (b"server", b"uvicorn")]
        return Headers.from_raw(raw), bytes(bytearray(size))  # the edge stores bytes(buffer)

    def store(self, number: int, size: int, tagged: bool) -> None:
        """Store one object through the edge's miss path (without the network)."""
        request = self.request(number)
        headers, body = self.received(number, size, tagged)
        now = time.time()
        entry = self.edge.make_entry(request, 200, headers, body, now - FETCH_SECONDS, now)
        if not self.edge.put(request, entry, None, self.edge.store.purge_serial):
            raise BenchError(f"the store refused object {number}")


def content_bytes(factory: EntryFactory, size: int, tagged: bool) -> tuple[int, int]:
    """(body + header bytes, charged size) of one object, as the store counts them."""
    request = factory.request(0)
    headers, body = factory.received(0, size, tagged)
    entry = factory.edge.make_entry(request, 200, headers, body, 0.0, 0.0)
    return len(body) + sum(len(k) + len(v) for k, v in entry.headers.items), entry.size


def fill_baseline(factory: EntryFactory, objects: int, size: int, tagged: bool, block: bool) -> dict[str, Any]:
    """A plain dict of cache key -> (header fields, body) holding the same bytes and nothing else: the fields
    as a list of byte pairs (the shape ASGI sends), or with `block` as one raw `name: value CRLF` block."""
    kept: dict[str, Any] = {}
    for number in range(objects):
        url = factory.request(number).url
        headers, body = factory.received(number, size, tagged)
        pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items]
        kept[url] = (b"".join(b"%s: %s\r\n" % pair for pair in pairs) if block else pairs, body)
    return kept


def traced_per_object(objects: int, build: Callable[[], Any]) -> tuple[float, Any]:
    """Bytes per object that `build` leaves allocated (tracemalloc is running)."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    built = build()
    gc.collect()
    return (tracemalloc.get_traced_memory()[0] - before) / objects, built


def measure_row(objects: int, size: int, tagged: bool, sites: bool) -> Row:
    """Traced bytes per object of the edge's store and of the baseline dicts, each built from nothing."""
    factory = EntryFactory()
    content, charged = content_bytes(factory, size, tagged)
    tracemalloc.start()
    try:
        pairs, kept = traced_per_object(objects, lambda: fill_baseline(factory, objects, size, tagged, block=False))
        del kept
        block, kept = traced_per_object(objects, lambda: fill_baseline(factory, objects, size, tagged, block=True))
        del kept
        gc.collect()
        tracemalloc.clear_traces()  # from here on, every live trace is the store's

        def fill() -> None:
            for number in range(objects):
                factory.store(number, size, tagged)

        ours, _ = traced_per_object(objects, fill)
        snapshot = tracemalloc.take_snapshot() if sites else None
    finally:
        tracemalloc.stop()
    if len(factory.edge.store) != objects:
        raise BenchError(f"the store kept {len(factory.edge.store)} of {objects} objects")
    row = Row(size, tagged, content, charged, ours, pairs, block)
    if snapshot is not None:
        for stat in snapshot.statistics("lineno"):
            if stat.size >= objects * 8:  # sites keeping at least 8 B per object
                frame = stat.traceback[0]
                where = os.path.relpath(frame.filename, REPO)
                code = linecache.getline(frame.filename, frame.lineno).strip()
                row.sites.append((f"{where}:{frame.lineno}  {code[:90]}", stat.size / objects))
    return row


def rss_kib(pid: int | str = "self", field_name: str = "VmRSS") -> int:
    """A /proc/<pid>/status memory field, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field_name} in /proc/{pid}/status")


def rss_probe(objects: int, size: int, tagged: bool) -> float:
    """In a fresh interpreter without tracemalloc: RSS added per stored object."""
    factory = EntryFactory()
    for number in range(-1000, 0):  # warm what the first objects allocate once (counters, interned names)
        factory.store(number, size, tagged)
    gc.collect()
    before = rss_kib()
    for number in range(objects):
        factory.store(number, size, tagged)
    gc.collect()
    return (rss_kib() - before) * 1024 / objects


def measure_rss(objects: int, size: int, tagged: bool) -> float:
    argv = [sys.executable, __file__, "--rss-probe", f"{objects}:{size}:{int(tagged)}"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise BenchError(f"the RSS probe failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip())


def just_grown(objects: int) -> int:
    """The first count above `objects` at which the store's dicts, filled one key at a time, have just
    grown (CPython grows a dict at two thirds full): where a key costs its dict the most."""
    size = 8
    while size * 2 // 3 < objects:
        size *= 2
    return size * 2 // 3 + 2  # the tag index holds one key more than the entries' dict


def measure_objects(objects: int) -> tuple[list[Row], Row]:
    """The rows at `objects`, and the one with the most overhead again where the dicts have just grown."""
    rows = []
    for tagged in (False, True):
        for size in ROW_SIZES:
            print(f"  1. {objects:,} objects of {size} B, {'2 tags' if tagged else 'no tags'} ...",
                  file=sys.stderr, flush=True)
            row = measure_row(objects, size, tagged, sites=tagged and size == ROW_SIZES[-1])
            row.rss = measure_rss(objects, size, tagged)
            rows.append(row)
    worst = max(rows, key=lambda r: r.overhead)
    grown = just_grown(objects)
    print(f"  1. {grown:,} objects of {worst.label} (the dicts just grown) ...", file=sys.stderr, flush=True)
    return rows, measure_row(grown, worst.body, worst.tagged, sites=False)


# -- 2. process memory under a long run of unique objects -------------------------------------------
@dataclass
class Sample:
    t: float  # seconds since the traffic started (negative before)
    sent: int  # requests answered so far
    rss: int  # bytes
    objects: int
    stored: int  # bytes the store accounts
    evictions: int


@dataclass
class Run:
    """One edge process through the whole sequence of unique objects."""

    cache_size: int
    empty: Sample  # just before the traffic
    samples: list[Sample]
    peak: int  # VmHWM: the kernel's high-water mark of RSS, between samples too
    requests: int
    seconds: float
    not_stored: int  # answers whose Cache-Status did not say `stored`

    @property
    def filled(self) -> Sample | None:
        return next((s for s in self.samples if s.evictions > 0), None)

    @property
    def end(self) -> Sample:
        return self.samples[-1]

    def during(self) -> list[Sample]:
        return [s for s in self.samples if 0 <= s.t <= self.seconds]

    def growth(self, rss: int) -> float:
        return (rss - self.empty.rss) / self.cache_size

    def late_slope(self) -> tuple[float, float, float]:
        """Over the last half of the traffic: RSS and store bytes per second (least squares), and seconds covered."""
        half = [s for s in self.during() if s.t >= self.seconds / 2]
        if len(half) < 3:
            return 0.0, 0.0, 0.0
        ts = [s.t for s in half]
        return (statistics.linear_regression(ts, [s.rss for s in half]).slope,
                statistics.linear_regression(ts, [s.stored for s in half]).slope, ts[-1] - ts[0])


def object_sizes(mix: str, total: int, seed: int = 10) -> list[int]:
    """Body sizes of the unique objects, in request order, until they add up to `total` bytes."""
    rng = random.Random(seed)
    sizes, weights = zip(*MIXES[mix])
    out: list[int] = []
    remaining = total
    while remaining > 0:
        size = rng.choices(sizes, weights)[0]
        out.append(size)
        remaining -= size
    return out


async def sample_edge(edge: Service, stats: HttpConnection, t0: float, sent: int) -> Sample:
    answer = await stats.exchange("GET", "/_edge/stats", [("authorization", f"Bearer {ADMIN_TOKEN}")])
    if answer.status != 200:
        raise BenchError(f"/_edge/stats answered {answer.status}: {answer.body[:200]!r}")
    store = json.loads(answer.body)["store"]
    return Sample(time.monotonic() - t0, sent, rss_kib(edge.process.pid) * 1024, store["objects"], store["bytes"],
                  store["evictions"])


async def drive(edge: Service, cache_size: int, sizes: Sequence[int]) -> Run:
    """Send every object once through `edge`, sampling its memory every second."""
    stats = await HttpConnection.open(HOST, edge.port, host=SITE)
    samples: list[Sample] = []
    t0 = time.monotonic() + SETTLE
    await asyncio.sleep(SETTLE / 2)
    samples.append(await sample_edge(edge, stats, t0, 0))
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    empty = await sample_edge(edge, stats, t0, 0)
    samples.append(empty)
    numbers = iter(range(len(sizes)))
    sent = 0
    not_stored = 0

    async def client() -> None:
        nonlocal sent, not_stored
        conn = await HttpConnection.open(HOST, edge.port, host=SITE)
        try:
            for number in numbers:
                size = sizes[number]
                answer = await conn.exchange("GET", f"/obj/{number}?size={size}")
                if answer.status != 200 or answer.length != size:
                    raise BenchError(f"/obj/{number} gave {answer.status} with {answer.length} of {size} bytes")
                if "stored" not in answer.fields.get("cache-status", ""):
                    not_stored += 1
                sent += 1
        finally:
            conn.close()

    async def sampler() -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            samples.append(await sample_edge(edge, stats, t0, sent))

    watcher = asyncio.create_task(sampler())
    try:
        clients = [asyncio.create_task(client()) for _ in range(CONCURRENCY)]
        try:
            await asyncio.gather(*clients)
        finally:
            for task in clients:
                task.cancel()
        seconds = time.monotonic() - t0
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await asyncio.sleep(SETTLE)
    samples.append(await sample_edge(edge, stats, t0, sent))
    stats.close()
    return Run(cache_size, empty, samples, rss_kib(edge.process.pid, "VmHWM") * 1024, sent, seconds, not_stored)


def run_edge(scratch: Path, origin: Service, cache_size: int, sizes: Sequence[int]) -> Run:
    """A fresh edge with `cache_size`, driven through `sizes`; always stopped on the way out."""
    port = free_port()
    edge = spawn(f"edge-{cache_size // MIB}m", [
        sys.executable, "-m", "cdn", "edge", "--host", HOST, "--port", str(port), "--origin", origin.url,
        "--cache-size", str(cache_size), "--no-access-log", "--shield", '{"rules": []}',
        "--admin-token", ADMIN_TOKEN, "--id", "edge-mem"], scratch, port)
    try:
        wait_until_listening([edge], START_TIMEOUT)
        return asyncio.run(drive(edge, cache_size, sizes))
    finally:
        stop_all([edge])


def measure_process(cache_sizes: Sequence[int], factor: float, mix: str) -> tuple[list[Run], list[int]]:
    """Each cache size in its own edge process, all behind one origin, through the same objects."""
    sizes = object_sizes(mix, int(factor * max(cache_sizes)))
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        port = free_port()
        origin = spawn("origin", [sys.executable, "-m", "uvicorn", "memory_bench:origin_app", "--app-dir", str(HERE),
                                  "--host", HOST, "--port", str(port), "--log-level", "warning", "--no-access-log"],
                       scratch, port)
        try:
            wait_until_listening([origin], START_TIMEOUT)
            runs = []
            for cache_size in cache_sizes:
                print(f"  2. edge with a {cache_size // MIB} MiB cache: {len(sizes):,} unique objects, "
                      f"{sum(sizes) / MIB:.0f} MiB ...", file=sys.stderr, flush=True)
                runs.append(run_edge(scratch, origin, cache_size, sizes))
        finally:
            stop_all([origin])
    return runs, sizes


# -- report ---------------------------------------------------------------------
def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> None:
    """Columns aligned: the first to the left, the rest to the right."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print(indent + "  ".join(cells).rstrip())


def verdict(value: float, goal: float) -> str:
    return f"{value / goal:.2f}x the goal: {'met' if value <= goal else 'NOT met'}"


def mib(n: float) -> str:
    return f"{n / MIB:.1f}"


def report_objects(rows: Sequence[Row], grown: Row, objects: int) -> None:
    print(f"\n1. Bytes per cached object, {objects:,} objects per row, stored through Edge.make_entry and Edge.put "
          f"(tracemalloc; RSS: a fresh interpreter without it)")
    print(f"   content: body + header field text; charged: Entry.size = body + ENTRY_OVERHEAD {ENTRY_OVERHEAD} "
          f"+ BLOCK_OVERHEAD {BLOCK_OVERHEAD} + field text and separators (+ {TAG_OVERHEAD} + length per tag); "
          f"ovh: bytes kept beyond content")
    print_table(
        ("", "content", "ours", "ours ovh", "pairs ovh", "block ovh", "vs pairs", "vs block", "charged",
         "traced/charged", "RSS", "RSS/charged"),
        [(r.label, f"{r.content:.0f}", f"{r.ours:.0f}", f"{r.overhead:.0f}", f"{r.pairs - r.content:.0f}",
          f"{r.block - r.content:.0f}", f"{r.overhead / (r.pairs - r.content):.1f}x",
          f"{r.overhead / (r.block - r.content):.1f}x", f"{r.charged:.0f}", f"{r.ours / r.charged:.2f}",
          f"{r.rss:.0f}", f"{r.rss / r.charged:.2f}") for r in rows])
    print("   baselines: a plain dict of cache key -> (header fields, body) with the same bytes; pairs: the fields as a "
          "list of (name, value) bytes pairs; block: one raw 'name: value CRLF' bytes block")
    worst = max(rows, key=lambda r: r.overhead)
    print(f"  the same right after the store's dicts grow ({just_grown(objects):,} objects): {grown.overhead:.0f} B "
          f"({grown.label}; a dict key costs its dict 21 to 43 B as the dict fills)")
    most = max(worst.overhead, grown.overhead)
    print(f"  goal: at most a few hundred bytes beyond body and headers (read as {GOAL_OVERHEAD} B) -> "
          f"{most:.0f} B ({worst.label}), {verdict(most, GOAL_OVERHEAD)}")
    under = [r for r in rows if max(r.ours, r.rss) > r.charged]
    if under:
        real = max(max(r.ours, r.rss) / r.charged for r in under)
        print(f"  the store charges LESS than objects really take in {len(under)} of {len(rows)} rows "
              f"(up to {real:.2f}x): a full cache holds more memory than --cache-size says")
    else:
        print("  the store charges at least what every object really takes: the cache_size bound holds")
    for row in rows:
        if row.sites:
            print(f"  where '{row.label}' goes ({row.ours:.0f} B), bytes per object by allocation site "
                  f"(tracemalloc, sites of 8 B or more):")
            for site, size in row.sites[:12]:
                print(f"    {size:6.0f}  {site}")
            print("    (a block CPython keeps on a free list and hands to a later object stays under the site that "
                  "first allocated it)")


def report_process(runs: Sequence[Run], sizes: Sequence[int], mix: str, factor: float) -> None:
    big, small = runs[0], runs[-1]
    print(f"\n2. Edge process RSS (VmRSS; peak = VmHWM) under {big.requests:,} unique objects, {mix} sizes "
          f"({', '.join(f'{s} B' for s, _ in MIXES[mix])}; mean {statistics.mean(sizes):,.0f} B), "
          f"{sum(sizes) / MIB:.0f} MiB of bodies = {factor:g}x the larger cache; {CONCURRENCY} connections")
    rows = []
    for run in runs:
        filled = run.filled
        rows.append((
            f"cache {run.cache_size // MIB} MiB", mib(run.empty.rss),
            mib(filled.rss) if filled else "never", mib(run.peak), mib(run.end.rss),
            f"{run.growth(run.peak):.2f}", f"{run.growth(run.end.rss):.2f}",
            f"{run.end.objects:,}", f"{run.end.stored / run.cache_size:.2f}",
            f"{run.requests / run.seconds:.0f}", f"{run.not_stored}"))
    print_table(("MiB", "empty", "filled", "peak", "end", "(peak-empty)/cache", "(end-empty)/cache", "objects",
                 "store/cache", "req/s", "not stored"), rows)
    growth = big.growth(big.peak)
    print(f"  goal: RSS within {GOAL_PROCESS}x the cache size plus a constant (the empty RSS, "
          f"{mib(big.empty.rss)} MiB) -> {growth:.2f}, {verdict(growth, GOAL_PROCESS)}")
    if big is not small:
        span = big.cache_size - small.cache_size
        marginal = ((big.peak - big.empty.rss) - (small.peak - small.empty.rss)) / span
        marginal_end = ((big.end.rss - big.empty.rss) - (small.end.rss - small.empty.rss)) / span
        print(f"  baseline: the same traffic through a {small.cache_size // MIB} MiB cache: what serving costs "
              f"besides the cache = {mib(small.peak - small.empty.rss)} MiB at peak. RSS per byte of cache size "
              f"with that removed, (big - small growth) / {span // MIB} MiB: peak {marginal:.2f}, end {marginal_end:.2f}"
              f" ({verdict(marginal, GOAL_PROCESS)})")
        extra_rss = (big.end.rss - big.empty.rss) - (small.end.rss - small.empty.rss)
        extra_charged = big.end.stored - small.end.stored
        extra_objects = max(big.end.objects - small.end.objects, 1)
        print(f"  per object the larger cache holds beyond the smaller ({extra_objects:,} more at the end): RSS "
              f"{extra_rss / extra_objects:,.0f} B, charged {extra_charged / extra_objects:,.0f} B: real/charged "
              f"{extra_rss / max(extra_charged, 1):.2f}")
    print("  leak check, least-squares slope over the last half of the traffic (the cache full, evicting all along):")
    slope_rows = []
    for run in runs:
        rss_slope, store_slope, covered = run.late_slope()
        half = [s for s in run.during() if s.t >= run.seconds / 2]
        per_k = rss_slope * covered / max(half[-1].sent - half[0].sent, 1) * 1000 if len(half) > 2 else 0.0
        slope_rows.append((f"cache {run.cache_size // MIB} MiB", f"{rss_slope * 60 / MIB:+.2f}",
                           f"{store_slope * 60 / MIB:+.2f}", f"{per_k / 1024:+.2f}",
                           f"{rss_slope * covered / run.cache_size:+.3f}", f"{len(half)}"))
    print_table(("", "RSS MiB/min", "store MiB/min", "RSS KiB/1k req", "RSS growth over the half / cache", "samples"),
                slope_rows, indent="    ")


def describe_code() -> str:
    """The commit measured, and the files of the services that differ from it (memory moves with the code)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.rstrip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "edge", "cdn").splitlines()]
    return f"{commit}" + (f" with uncommitted {', '.join(changed)}" if changed else "")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 5,000 objects a row; 16 MiB vs 4 MiB caches, 2x traffic")
    parser.add_argument("--objects", type=int, default=None, help="objects per row in part 1 (default: 20,000)")
    parser.add_argument("--cache-size", type=int, default=None, help="MiB, the cache under test (default: 64)")
    parser.add_argument("--small-cache", type=int, default=None, help="MiB, the baseline's cache (default: 8)")
    parser.add_argument("--factor", type=float, default=None,
                        help="bodies sent, as a multiple of --cache-size (default: 4)")
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed", help="object sizes in part 2")
    parser.add_argument("--only", choices=("objects", "process"), help="run one part")
    parser.add_argument("--rss-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.objects = args.objects or (5_000 if quick else 20_000)
    args.cache_size = (args.cache_size or (16 if quick else 64)) * MIB
    args.small_cache = (args.small_cache or (4 if quick else 8)) * MIB
    args.factor = args.factor or (2.0 if quick else 4.0)
    if args.objects < 1000 or args.small_cache >= args.cache_size or args.factor < 1:
        parser.error("--objects at least 1000, --small-cache below --cache-size, --factor at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run both parts and print them; 1 when it could not run, 130 when interrupted."""
    args = parse_args(argv)
    if args.rss_probe:
        objects, size, tagged = (int(v) for v in args.rss_probe.split(":"))
        print(rss_probe(objects, size, bool(tagged)))
        return 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill also stops the servers
    load_at_start = os.getloadavg()[0]
    code_version = describe_code()
    rows: list[Row] = []
    grown: Row | None = None
    runs: list[Run] = []
    try:
        if args.only != "process":
            rows, grown = measure_objects(args.objects)
        if args.only != "objects":
            runs, sizes = measure_process((args.cache_size, args.small_cache), args.factor, args.mix)
    except (BenchError, ServiceStartError, ConnectionClosed) as exc:
        print(f"memory_bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("memory_bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    print(f"\nmemory_bench: {os.cpu_count()} CPUs, load {load_at_start:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"Python {sys.version.split()[0]}; code: {code_version}")
    if grown is not None:
        report_objects(rows, grown, args.objects)
    if runs:
        report_process(runs, sizes, args.mix, args.factor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
