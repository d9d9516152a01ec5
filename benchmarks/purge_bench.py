"""Purge fan-out, purge API throughput, and an edge's cost of a large tag purge, each beside a baseline.

1. Propagation: a redis-server, the purge API and 10 edges run as separate
   processes on loopback. Tag purges go out one at a time; each edge's ack time
   (`GET /purges/{id}?wait=5`, `applied[edge]["at"]`) minus the client's send time
   gives the time to the first, median and last edge. Baseline: 10 bare reader
   processes woken by an XADD on the same redis-server (XREAD BLOCK, as the edges
   read the log), interleaved with the purges. Goal: last edge p99 under 50 ms.
2. Throughput: 32 requests in flight against the purge API (`--api-workers`), tag
   purges without wait, then (same client, same server) `GET /health`, which
   also makes one Redis call. Goal: at least 1,000 purges/s, with every edge
   applying them all (their `purges_applied` counters) shortly after.
3. Apply: in this process, a Store with 100,000 small entries all tagged
   `products`; hard and soft `purge_tags` and `apply_purge`. Baseline: filling
   those entries. Goal: under 100 ms.
4. Memory: tracemalloc of the store's bookkeeping for 100,000 entries with two
   tags each and without tags; the difference is the tag index.

    .venv/bin/python benchmarks/purge_bench.py [--quick] [--purges N] [--duration S] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.h11_client import ConnectionClosed, HttpConnection  # noqa: E402
from benchmarks.processes import (  # noqa: E402
    HOST,
    Service,
    ServiceStartError,
    free_port,
    group_cpu_seconds,
    spawn,
    spawn_redis,
    stop_all,
    wait_until_listening,
)
from edge.purge_listener import apply_purge  # noqa: E402
from edge.store import Entry, Store  # noqa: E402
from purge_api.log import Purge, after  # noqa: E402

TOKEN = "bench-token"
ADMIN_TOKEN = "bench-admin"
EDGES = 10
START_TIMEOUT = 30.0
NOTIFY_STREAM, REPLY_STREAM = "bench:notify", "bench:replies"  # the baseline's; the purge log lives under cdn:
WARMUP_PURGES = 5
CONCURRENCY = 32
CATCH_UP_TIMEOUT = 30.0
MAX_PAUSE = 5.0  # seconds the edges may be paused (SIGSTOP) without their Redis reads timing out
OBJECTS = 100_000
BODY_SIZE = 100
HEADER_BYTES = 200  # what the store is told the stored headers weigh; no header objects are built here


class BenchEntry(Entry):
    """An entry the store charges HEADER_BYTES of header fields for, without keeping any."""

    __slots__ = ()

    def fields_size(self) -> int:
        return HEADER_BYTES


class TaggedBenchEntry(BenchEntry):
    """Tagged `products` and `product-<n>`, read from its key as the edge's entries read theirs from their fields."""

    __slots__ = ()

    @property
    def tags(self) -> tuple[str, str]:
        return "products", "product-" + self.key.rpartition("/")[2]


GOAL_P99_MS = 50.0
GOAL_PURGES_PER_S = 1000.0
GOAL_APPLY_MS = 100.0
WHOLE = 1 << 30  # bytes of an answer the API client keeps: all of it


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


# -- the fleet ------------------------------------------------------------------
@dataclass
class Fleet:
    """Everything the fleet measurements talk to."""

    redis_url: str
    redis: Service
    api: Service
    edges: list[Service]
    readers: list[Service]  # the baseline's bare XREAD processes


@contextlib.contextmanager
def running_fleet(scratch: Path, api_workers: int) -> Iterator[Fleet]:
    """redis-server, the purge API, EDGES edges and EDGES baseline readers; always stopped on the way out."""
    services: list[Service] = []
    try:
        redis = spawn_redis("redis-server", scratch)
        services.append(redis)
        wait_until_listening([redis], START_TIMEOUT)
        redis_url = f"redis://{HOST}:{redis.port}/0"
        nobody = f"http://{HOST}:{free_port()}"  # the edges are never asked for content
        api_port = free_port()
        api = spawn("purge-api", [sys.executable, "-m", "cdn", "purge-api", "--host", HOST, "--port", str(api_port),
                                  "--redis", redis_url, "--token", TOKEN, "--workers", str(api_workers)], scratch, api_port)
        services.append(api)
        edges = []
        for i in range(EDGES):
            edge_port = free_port()
            edges.append(spawn(f"edge-{i}", [
                sys.executable, "-m", "cdn", "edge", "--host", HOST, "--port", str(edge_port), "--origin", nobody,
                "--redis", redis_url, "--id", f"edge-{i}", "--admin-token", ADMIN_TOKEN], scratch, edge_port))
        services.extend(edges)
        reader = [sys.executable, __file__, "--xread-reader", redis_url, "--name"]
        readers = [spawn(f"reader-{i}", [*reader, f"reader-{i}"], scratch) for i in range(EDGES)]
        services.extend(readers)
        wait_until_listening([api, *edges], START_TIMEOUT)
        yield Fleet(redis_url, redis, api, edges, readers)
    finally:
        stop_all(services[::-1])


# -- the purge API's client ----------------------------------------------------------
class ApiConnection(HttpConnection):
    """A connection to the purge API or an edge's admin endpoints: bearer token, JSON bodies read whole."""

    @classmethod
    async def connect(cls, url: str) -> ApiConnection:
        address, port = url.removeprefix("http://").split(":")
        return await cls.open(address, int(port))  # type: ignore[return-value]

    async def request(self, method: str, target: str, body: bytes = b"", token: str = TOKEN) -> tuple[int, bytes]:
        """Send one request and read the whole response: its status and body."""
        headers = [("authorization", f"Bearer {token}")]
        if method == "POST":
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        answer = await self.exchange(method, target, headers, body, keep=WHOLE)
        return answer.status, answer.body

    async def json(self, method: str, target: str, payload: Any = None, expect: int = 200, token: str = TOKEN) -> Any:
        body = b"" if payload is None else json.dumps(payload).encode()
        status, answer = await self.request(method, target, body, token)
        if status != expect:
            raise BenchError(f"{method} {target} gave {status}, expected {expect}: {answer[:300]!r}")
        return json.loads(answer)


def tag_purge(tag: str) -> bytes:
    return json.dumps({"kind": "tag", "values": [tag]}).encode()


def percentile(values: Sequence[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


# -- the baseline: bare XADD -> XREAD fan-out -----------------------------------------
async def xread_reader(redis_url: str, name: str) -> None:
    """A baseline reader: block on the notify stream as an edge blocks on the log; reply with the wake-up time."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url, decode_responses=True)
    await client.xadd(REPLY_STREAM, {"ready": name})
    position = "0-0"  # the stream is empty until every reader is ready
    while True:
        answer = await client.xread({NOTIFY_STREAM: position}, count=512, block=1000)
        if not answer:
            continue
        at = time.time()
        entries = answer[0][1]
        for _, fields in entries:
            await client.xadd(REPLY_STREAM, {"reader": name, "n": fields["n"], "at": repr(at)})
        position = entries[-1][0]


class Notifier:
    """The client side of the baseline: XADD one notification and collect every reader's wake-up time."""

    def __init__(self, redis_url: str, readers: int) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(redis_url, decode_responses=True)
        self.readers = readers
        self.position = "0-0"
        self.sent = 0

    async def _replies(self, block: float) -> list[dict[str, str]]:
        """The replies after the last ones read, waiting up to `block` seconds for the first."""
        answer = await self.redis.xread({REPLY_STREAM: self.position}, count=512, block=int(block * 1000))
        if not answer:
            return []
        entries = answer[0][1]
        self.position = entries[-1][0]
        return [fields for _, fields in entries]

    async def wait_ready(self, timeout: float) -> None:
        ready: set[str] = set()
        deadline = time.monotonic() + timeout
        while len(ready) < self.readers:
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(ready)} of {self.readers} baseline readers started in {timeout:.0f} s")
            ready.update(f["ready"] for f in await self._replies(block=1.0) if "ready" in f)

    async def notify(self) -> list[float]:
        """Seconds from just before the XADD to each reader's wake-up, sorted."""
        self.sent += 1
        n = str(self.sent)
        sent = time.time()
        await self.redis.xadd(NOTIFY_STREAM, {"n": n})
        woke: dict[str, float] = {}
        while len(woke) < self.readers:
            replies = await self._replies(block=5.0)
            if not replies:
                raise BenchError(f"{self.readers - len(woke)} baseline reader(s) did not wake within 5 s")
            woke.update((f["reader"], float(f["at"])) for f in replies if f.get("n") == n)
        return sorted(at - sent for at in woke.values())

    async def close(self) -> None:
        await self.redis.aclose()


# -- 1. propagation ---------------------------------------------------------------
@dataclass
class Propagation:
    """Per purge: seconds to each edge's ack (sorted), to the API's 202, and to the ?wait answer."""

    to_edges: list[list[float]] = field(default_factory=list)
    logged: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    baseline: list[list[float]] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    # ?wait answers that listed an edge as "started after the purge" (no ack time) although it acked it
    misreported: int = 0
    edge_cpu_us: float = 0.0  # CPU per purge of one edge (mean over the edges), heartbeats included
    reader_cpu_us: float = 0.0  # the same for one baseline reader and one notification


@dataclass
class Sample:
    """One purge: seconds from the send to each edge's ack (sorted; None if not complete), to the 202, to the answer."""

    purge_id: str
    to_edges: list[float] | None
    logged: float
    answered: float
    misreported: bool  # the answer had an edge without an ack time, which a second look found


async def purge_once(api: ApiConnection, tag: str) -> Sample:
    """POST a tag purge, then GET its status with ?wait=5; the ack times come from the edges' acks."""
    sent = time.time()
    status, body = await api.request("POST", "/purges", tag_purge(tag))
    logged = time.time() - sent
    if status != 202:
        raise BenchError(f"POST /purges gave {status}: {body[:300]!r}")
    purge_id = json.loads(body)["id"]
    answer = await api.json("GET", f"/purges/{purge_id}?wait=5")
    answered = time.time() - sent
    misreported = False
    # status() reads the acks, then the registry: an edge whose ack and heartbeat land in between is
    # listed as "started after the purge" with no time. Its ack is there a moment later.
    for _ in range(10):
        if not answer["complete"] or all(a.get("at") is not None for a in answer["applied"].values()):
            break
        misreported = True
        await asyncio.sleep(0.01)
        answer = await api.json("GET", f"/purges/{purge_id}")
    acks = [a["at"] for a in answer["applied"].values() if a.get("at") is not None]
    to_edges = sorted(at - sent for at in acks) if answer["complete"] and len(acks) == EDGES else None
    return Sample(purge_id, to_edges, logged, answered, misreported)


async def measure_propagation(fleet: Fleet, api: ApiConnection, notifier: Notifier, purges: int) -> Propagation:
    """`purges` purges one at a time, each right after one baseline notification, so noise falls on both alike."""
    result = Propagation()
    edges, readers = [e.pgid for e in fleet.edges], [r.pgid for r in fleet.readers]
    for i in range(WARMUP_PURGES + purges):
        if i == WARMUP_PURGES:
            cpu_before = group_cpu_seconds(edges + readers)
        woke = await notifier.notify()
        sample = await purge_once(api, f"bench-propagation-{i}")
        if i < WARMUP_PURGES:
            continue
        result.baseline.append(woke)
        result.misreported += sample.misreported
        if sample.to_edges is None:
            result.incomplete.append(sample.purge_id)
            continue
        result.to_edges.append(sample.to_edges)
        result.logged.append(sample.logged)
        result.answered.append(sample.answered)
    cpu_after = group_cpu_seconds(edges + readers)
    result.edge_cpu_us = sum(cpu_after[p] - cpu_before[p] for p in edges) * 1e6 / len(edges) / purges
    result.reader_cpu_us = sum(cpu_after[p] - cpu_before[p] for p in readers) * 1e6 / len(readers) / purges
    return result


# -- 2. throughput ----------------------------------------------------------------
@dataclass
class Load:
    """One closed-loop run of CONCURRENCY clients against one endpoint."""

    requests: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    cpu: dict[str, float]  # seconds per process kind during the run (and "client": this process)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def cpu_us(self, kind: str) -> float:
        return self.cpu[kind] * 1e6 / self.requests


async def closed_loop(connections: list[ApiConnection], send: Callable[[ApiConnection], Awaitable[int]],
                      duration: float, groups: dict[str, list[int]]) -> Load:
    """Every connection sends its next request as soon as the last one answered, until `duration` is over."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    pgids = [p for ps in groups.values() for p in ps]
    cpu_before, client_before = group_cpu_seconds(pgids), time.process_time()
    start = time.perf_counter()
    deadline = start + duration

    async def worker(conn: ApiConnection) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            statuses[await send(conn)] += 1
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(worker(c) for c in connections))
    seconds = time.perf_counter() - start
    cpu_after, client_after = group_cpu_seconds(pgids), time.process_time()
    cpu = {kind: sum(cpu_after[p] - cpu_before[p] for p in ps) for kind, ps in groups.items()}
    cpu["client"] = client_after - client_before
    return Load(len(latencies), seconds, latencies, statuses, cpu)


HEALTH, FOLLOWING, PAUSED = "GET /health", "POST /purges, edges following", "POST /purges, edges paused"


@dataclass
class Throughput:
    loads: dict[str, list[Load]] = field(default_factory=lambda: {HEALTH: [], FOLLOWING: [], PAUSED: []})
    # per run, purges the log gained (its entries-added), and seconds until every edge had applied them
    logged: dict[str, list[int]] = field(default_factory=lambda: {FOLLOWING: [], PAUSED: []})
    catch_up: dict[str, list[float | None]] = field(default_factory=lambda: {FOLLOWING: [], PAUSED: []})
    catch_up_cpu_us: list[float] = field(default_factory=list)  # all edges' CPU per purge, catching up after the pause
    redis_bytes_per_purge: list[float] = field(default_factory=list)


async def applied_counts(edges: list[ApiConnection]) -> list[int]:
    """Each edge's purges_applied counter (its admin stats)."""
    stats = [await e.json("GET", "/_edge/stats", token=ADMIN_TOKEN) for e in edges]
    return [s["counters"].get("purges_applied", 0) for s in stats]


async def wait_caught_up(api: ApiConnection, edges: list[ApiConnection], last: str, targets: list[int],
                         since: float) -> float | None:
    """Seconds from `since` until every edge applied through position `last` and its counter reached its target.

    The registry (one call to the API) is polled rather than the edges, whose CPU is being measured;
    the counters confirm it once the registry says so. None after CATCH_UP_TIMEOUT.
    """
    while time.perf_counter() - since < CATCH_UP_TIMEOUT:
        registry = (await api.json("GET", "/edges"))["edges"]
        if len(registry) == EDGES and not any(after(last, e["applied_through"]) for e in registry):
            caught_up = time.perf_counter() - since
            if all(n >= t for n, t in zip(await applied_counts(edges), targets)):
                return caught_up
        await asyncio.sleep(0.02)
    return None


def signal_edges(fleet: Fleet, sig: signal.Signals) -> None:
    for edge in fleet.edges:
        os.killpg(edge.pgid, sig)


async def measure_throughput(fleet: Fleet, redis: Any, duration: float, rounds: int) -> Throughput:
    """Per round: /health; tag purges with the edges following; tag purges with the edges paused, then resumed."""
    groups = {"purge API": [fleet.api.pgid], "redis-server": [fleet.redis.pgid],
              "edges": [e.pgid for e in fleet.edges]}
    edge_pgids = groups["edges"]
    result = Throughput()
    connections = [await ApiConnection.connect(fleet.api.url) for _ in range(CONCURRENCY)]
    edge_stats = [await ApiConnection.connect(e.url) for e in fleet.edges]
    serial = 0

    async def health(conn: ApiConnection) -> int:
        return (await conn.request("GET", "/health"))[0]

    async def purge(conn: ApiConnection) -> int:
        nonlocal serial
        serial += 1
        return (await conn.request("POST", "/purges", tag_purge(f"bench-load-{serial}")))[0]

    async def log_tail() -> tuple[int, str]:
        """Entries ever added to the purge log, and the newest one's position."""
        info = await redis.xinfo_stream("cdn:purge-log")
        return int(info["entries-added"]), info["last-generated-id"]

    api = connections[0]

    try:
        await asyncio.gather(*(health(c) for c in connections))  # every connection open and used once
        for round_no in range(1, rounds + 1):
            step = f"  throughput round {round_no}/{rounds}:"
            print(f"{step} {HEALTH}, {duration:g} s ...", file=sys.stderr, flush=True)
            result.loads[HEALTH].append(await closed_loop(connections, health, duration, groups))

            print(f"{step} {FOLLOWING}, {duration:g} s ...", file=sys.stderr, flush=True)
            before, (added, _) = await applied_counts(edge_stats), await log_tail()
            memory_before = int((await redis.info("memory"))["used_memory"])
            result.loads[FOLLOWING].append(await closed_loop(connections, purge, duration, groups))
            ended = time.perf_counter()
            now_added, last = await log_tail()
            logged = now_added - added
            result.logged[FOLLOWING].append(logged)
            result.catch_up[FOLLOWING].append(
                await wait_caught_up(api, edge_stats, last, [n + logged for n in before], ended))
            memory_after = int((await redis.info("memory"))["used_memory"])
            result.redis_bytes_per_purge.append((memory_after - memory_before) / max(1, logged))

            # The API alone, as in production, where the edges run elsewhere. Paused edges keep their
            # blocked XREAD; the pause stays under redis-py's socket timeout (7 s) so none reconnects.
            paused_for = min(duration, MAX_PAUSE)
            print(f"{step} {PAUSED}, {paused_for:g} s ...", file=sys.stderr, flush=True)
            before, (added, _) = await applied_counts(edge_stats), await log_tail()
            signal_edges(fleet, signal.SIGSTOP)
            try:
                result.loads[PAUSED].append(await closed_loop(connections, purge, paused_for, groups))
            finally:
                signal_edges(fleet, signal.SIGCONT)
            resumed = time.perf_counter()
            cpu_before = group_cpu_seconds(edge_pgids)
            now_added, last = await log_tail()
            logged = now_added - added
            result.logged[PAUSED].append(logged)
            result.catch_up[PAUSED].append(
                await wait_caught_up(api, edge_stats, last, [n + logged for n in before], resumed))
            cpu_after = group_cpu_seconds(edge_pgids)
            catch_up_cpu = sum(cpu_after[p] - cpu_before[p] for p in edge_pgids)
            result.catch_up_cpu_us.append(catch_up_cpu * 1e6 / max(1, logged))
    finally:
        for conn in (*connections, *edge_stats):
            conn.close()
    return result


# -- the fleet, in order ------------------------------------------------------------
async def wait_for_live_edges(api: ApiConnection, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    live = 0
    while time.monotonic() < deadline:
        live = sum(e["live"] for e in (await api.json("GET", "/edges"))["edges"])
        if live == EDGES:
            return
        await asyncio.sleep(0.1)
    raise BenchError(f"only {live} of {EDGES} edges registered as live in {timeout:.0f} s")


async def measure_fleet(fleet: Fleet, purges: int, duration: float, rounds: int) -> tuple[Propagation, Throughput]:
    import redis.asyncio as aioredis

    api = await ApiConnection.connect(fleet.api.url)
    notifier = Notifier(fleet.redis_url, EDGES)
    redis = aioredis.from_url(fleet.redis_url, decode_responses=True)
    try:
        await wait_for_live_edges(api, START_TIMEOUT)
        await notifier.wait_ready(START_TIMEOUT)
        print(f"  propagation: {purges} purges one at a time, each after one baseline notification ...",
              file=sys.stderr, flush=True)
        propagation = await measure_propagation(fleet, api, notifier, purges)
        throughput = await measure_throughput(fleet, redis, duration, rounds)
    finally:
        api.close()
        await notifier.close()
        await redis.aclose()
    return propagation, throughput


# -- 3. one edge applying a large tag purge --------------------------------------------
def make_entries(count: int, tagged: bool) -> list[Entry]:
    """`count` entries with BODY_SIZE-byte bodies; tagged: all `products` plus a unique `product-<i>`."""
    entries = []
    for i in range(count):
        url = f"shop.example/api/products/{i}"
        body = f"product {i} ".encode().ljust(BODY_SIZE, b".")
        if tagged:
            entries.append(TaggedBenchEntry(key=url, body=body))
        else:
            entries.append(BenchEntry(key=url, body=body))
    return entries


def new_store() -> Store:
    return Store(capacity=1 << 32, max_object_size=1 << 20)  # nothing is evicted


def timed(action: Callable[[], int]) -> tuple[float, int]:
    gc.collect()
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


PURGE_OPERATIONS: dict[str, Callable[[Store], int]] = {
    'store.purge_tags(["products"]), hard': lambda s: s.purge_tags(["products"]),
    'store.purge_tags(["products"]), soft': lambda s: s.purge_tags(["products"], soft=True),
    "apply_purge(tag products), hard": lambda s: apply_purge(s, Purge(id="p-bench", kind="tag", values=("products",))),
    "apply_purge(tag products), soft": lambda s: apply_purge(s, Purge(id="p-bench", kind="tag", values=("products",),
                                                                      soft=True)),
}


def measure_apply(rounds: int) -> dict[str, list[float]]:
    """Seconds per operation (and per fill, the baseline), each on a freshly filled store, `rounds` times."""
    times: dict[str, list[float]] = {"fill": [], **{name: [] for name in PURGE_OPERATIONS}}
    for round_no in range(1, rounds + 1):
        print(f"  apply round {round_no}/{rounds} ...", file=sys.stderr, flush=True)
        for name, operation in PURGE_OPERATIONS.items():
            apply_once(name, operation, times)
    return times


def apply_once(name: str, operation: Callable[[Store], int], times: dict[str, list[float]]) -> None:
    """Fill a fresh store, time `operation` on it (and, for a hard purge, the sweep after it), add to `times`."""
    store, entries = new_store(), make_entries(OBJECTS, tagged=True)
    fill_seconds, _ = timed(lambda: sum(store.put(e) for e in entries))
    if len(store) != OBJECTS:
        raise BenchError(f"the store kept {len(store)} of {OBJECTS} entries")
    seconds, purged = timed(lambda: operation(store))
    if purged != OBJECTS:
        raise BenchError(f"{name} purged {purged} of {OBJECTS} entries")
    times["fill"].append(fill_seconds)
    times[name].append(seconds)
    if name.endswith("hard"):
        # The entries leave in background steps of 1,000 (the edge's sweeper): the whole
        # work, and the longest the event loop is held by one step.
        steps = []
        while True:
            step, _ = timed(lambda: int(store.sweep(1000)))
            steps.append(step)
            if not store._to_sweep:
                break
        if len(store) != 1 and len(store) != 0:
            raise BenchError(f"the sweep left {len(store)} entries")
        times.setdefault(f"{name}: sweep, all steps", []).append(sum(steps))
        times.setdefault(f"{name}: sweep, longest step", []).append(max(steps))


# -- 4. the tag index's memory ---------------------------------------------------------
@dataclass
class Memory:
    """Bytes per object, from tracemalloc."""

    entries_plain: float  # Entry objects with key and body (tagged ones hold no more: they read their tags)
    store_plain: float  # the store's bookkeeping (the dict of entries, URL index) for untagged entries
    store_tagged: float  # the same for entries with two tags each

    @property
    def tag_index(self) -> float:
        return self.store_tagged - self.store_plain


def measure_memory() -> Memory:
    """Traced bytes of building entries, then of putting them in a store, with and without tags."""
    gc.collect()
    tracemalloc.start()
    try:
        def traced(build: Callable[[], Any]) -> tuple[float, Any]:
            before = tracemalloc.get_traced_memory()[0]
            built = build()
            return (tracemalloc.get_traced_memory()[0] - before) / OBJECTS, built

        entries_plain, plain = traced(lambda: make_entries(OBJECTS, tagged=False))
        _, tagged = traced(lambda: make_entries(OBJECTS, tagged=True))

        def filled(entries: list[Entry]) -> Store:
            store = new_store()
            for entry in entries:
                store.put(entry)
            return store

        store_plain, kept_plain = traced(lambda: filled(plain))
        store_tagged, kept_tagged = traced(lambda: filled(tagged))
        if len(kept_plain) != OBJECTS or len(kept_tagged) != OBJECTS or kept_tagged.tag_count() != OBJECTS + 1:
            raise BenchError("the memory stores did not keep every entry and tag")
    finally:
        tracemalloc.stop()
    return Memory(entries_plain, store_plain, store_tagged)


# -- report ---------------------------------------------------------------------
def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> None:
    """Columns aligned: the first to the left, the rest to the right."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print(indent + "  ".join(cells).rstrip())


def verdict(value: float, goal: float, below: bool) -> str:
    met = value < goal if below else value >= goal
    return f"{value / goal:.2f}x the goal: {'met' if met else 'NOT met'}"


def report_propagation(result: Propagation, purges: int) -> None:
    print(f"\n1. Propagation to {EDGES} edges (separate processes), {purges} tag purges one at a time: "
          f"from the client's send time to each edge's ack time")
    if not result.to_edges:
        print("  no purge completed on every edge")
        return
    rows = []
    picks: tuple[tuple[str, Callable[[list[float]], float]], ...] = (
        ("first edge", lambda d: d[0]), ("median edge", statistics.median), ("last edge", lambda d: d[-1]))
    for label, pick in picks:
        ours = [pick(d) * 1000 for d in result.to_edges]
        base = [pick(d) * 1000 for d in result.baseline]
        p50, p99 = statistics.median(ours), percentile(ours, 99)
        b50, b99 = statistics.median(base), percentile(base, 99)
        rows.append((label, f"{p50:.2f}", f"{p99:.2f}", f"{b50:.2f}", f"{b99:.2f}",
                     f"{p50 / b50:.1f}x", f"{p99 / b99:.1f}x"))
    print_table(("", "purge p50 ms", "purge p99 ms", "XADD->XREAD p50", "XADD->XREAD p99",
                 "p50 vs base", "p99 vs base"), rows)
    last_p99 = percentile([d[-1] * 1000 for d in result.to_edges], 99)
    print(f"  goal: last edge p99 under {GOAL_P99_MS:.0f} ms -> {last_p99:.2f} ms, "
          f"{verdict(last_p99, GOAL_P99_MS, True)}")
    print(f"  baseline: {EDGES} bare reader processes blocked in XREAD on the same redis-server, woken by one XADD "
          f"(the least a Redis-stream fan-out can take), interleaved with the purges")
    print(f"  CPU per purge, one edge: {result.edge_cpu_us:.0f} us; one bare reader per notification: "
          f"{result.reader_cpu_us:.0f} us ({result.edge_cpu_us / max(result.reader_cpu_us, 1):.1f}x)")
    print(f"  for scale: the API's 202 (purge logged) came after p50 {statistics.median(result.logged) * 1000:.2f} / "
          f"p99 {percentile(result.logged, 99) * 1000:.2f} ms; GET ?wait=5 answered complete after "
          f"p50 {statistics.median(result.answered) * 1000:.2f} / p99 {percentile(result.answered, 99) * 1000:.2f} ms")
    if len(result.to_edges) < 100:
        print(f"  ({len(result.to_edges)} samples: p99 is close to the maximum)")
    if result.misreported:
        print(f"  note: {result.misreported} of {purges} ?wait answers listed an edge as 'started after the purge' "
              f"with no ack time, though it had acked the purge (a second GET showed the ack)")
    if result.incomplete:
        print(f"  WARNING: {len(result.incomplete)} purge(s) not applied by all {EDGES} edges within 5 s: "
              f"{', '.join(result.incomplete[:5])}")


def report_throughput(result: Throughput, duration: float, rounds: int, api_workers: int) -> None:
    print(f"\n2. Purge API throughput: {CONCURRENCY} requests in flight (h11, keep-alive) for {duration:g} s "
          f"(paused: {min(duration, MAX_PAUSE):g} s), median of {rounds} round(s); "
          f"purge API workers: {api_workers}")
    health = result.loads[HEALTH]
    health_rate = statistics.median(load.rate for load in health)
    health_cpu = statistics.median(load.cpu_us("purge API") for load in health)
    rows = []
    for label, loads in result.loads.items():
        rate = statistics.median(load.rate for load in loads)
        cpu = statistics.median(load.cpu_us("purge API") for load in loads)
        ratios = (("baseline", "baseline") if label == HEALTH
                  else (f"{rate / health_rate:.2f}", f"{cpu / health_cpu:.2f}"))
        p50 = statistics.median(percentile(load.latencies, 50) for load in loads) * 1000
        p99 = statistics.median(percentile(load.latencies, 99) for load in loads) * 1000
        edges_cpu = statistics.median(load.cpu_us("edges") for load in loads)
        rows.append((label, f"{rate:,.0f}", f"{p50:.1f}", f"{p99:.1f}", f"{cpu:.0f}", f"{edges_cpu:.0f}", *ratios))
    print_table(("", "req/s", "p50 ms", "p99 ms", "API CPU us/req", "edges CPU us/req", "req/s vs /health",
                 "API CPU/req vs /health"), rows)
    for label in (FOLLOWING, PAUSED):
        rate = statistics.median(load.rate for load in result.loads[label])
        print(f"  goal: at least {GOAL_PURGES_PER_S:,.0f} purges/s -> {label}: {rate:,.0f}/s, "
              f"{verdict(rate, GOAL_PURGES_PER_S, False)}")
    print("  baseline: GET /health on the same server, which also makes one Redis call (XINFO STREAM): "
          "the framework's floor")
    for label, when in ((FOLLOWING, "after the load ended"), (PAUSED, "after they were resumed")):
        for round_no, (load, logged, caught_up) in enumerate(zip(result.loads[label], result.logged[label],
                                                                  result.catch_up[label]), 1):
            other = sum(n for status, n in load.statuses.items() if status != 202)
            kept_up = (f"every edge applied all {logged:,} within {caught_up:.2f} s {when}" if caught_up is not None
                       else f"NOT every edge applied all {logged:,} within {CATCH_UP_TIMEOUT:.0f} s {when}")
            print(f"  {label}, round {round_no}: {load.statuses[202]:,} x 202{f', {other:,} other' if other else ''}, "
                  f"{logged:,} logged; {kept_up}")
    bad_health = sum(n for load in health for status, n in load.statuses.items() if status != 200)
    if bad_health:
        print(f"  WARNING: {bad_health} /health answers were not 200")
    following = result.loads[FOLLOWING]
    print("  CPU per purge with the edges following, median: " + ", ".join(
        f"{kind} {statistics.median(load.cpu_us(kind) for load in following):.0f} us"
        for kind in ("purge API", "redis-server", "edges", "client"))
        + f" (edges: all {EDGES} together); the edges catching up in batches after the pause: "
        f"{statistics.median(result.catch_up_cpu_us):.0f} us")
    print(f"  Redis memory per logged purge: {statistics.median(result.redis_bytes_per_purge):,.0f} bytes "
          f"(stream entry, id index, acks of {EDGES} edges; the id index and acks are kept 24 h)")


def report_apply(times: dict[str, list[float]], rounds: int) -> None:
    print(f"\n3. One edge applying a tag purge of {OBJECTS:,} cached objects (in-process Store, {BODY_SIZE} B bodies, "
          f"2 tags each), median of {rounds} round(s)")
    fill = statistics.median(times["fill"]) * 1000
    rows = [(f"fill: Store.put of {OBJECTS:,} entries", f"{fill:.1f}", "baseline", "")]
    for name in [n for n in times if n != "fill"]:
        ms = statistics.median(times[name]) * 1000
        goal = verdict(ms, GOAL_APPLY_MS, True) if ": sweep, all" not in name else "(background, between requests)"
        rows.append((name, f"{ms:.1f}", f"{ms / fill:.2f}", goal))
    print_table(("", "ms", "vs fill", f"goal: under {GOAL_APPLY_MS:.0f} ms"), rows)


def report_memory(memory: Memory) -> None:
    print(f"\n4. Tag index memory: {OBJECTS:,} entries with 2 tags each (`products` + a unique one), tracemalloc, "
          f"bytes per object")
    rows = [
        ("store bookkeeping, untagged entries (the dict of entries)", f"{memory.store_plain:.0f}", "baseline"),
        ("store bookkeeping, entries with 2 tags", f"{memory.store_tagged:.0f}",
         f"{memory.store_tagged / memory.store_plain:.2f}"),
        ("the tag index alone (the difference)", f"{memory.tag_index:.0f}",
         f"{memory.tag_index / memory.store_plain:.2f}"),
    ]
    print_table(("", "B/object", "vs untagged bookkeeping"), rows)
    not_the_entry = sys.getsizeof(bytes(BODY_SIZE)) + 8  # the body object, and the entry's slot in our list
    real = memory.entries_plain - not_the_entry + memory.store_tagged
    number = OBJECTS // 2
    url = f"shop.example/api/products/{number}"  # as make_entries names it
    charged = TaggedBenchEntry(key=url, body=b"").size - HEADER_BYTES
    print(f"  everything per entry but the body (Entry, key, tags, LRU, indexes): {real:.0f} B; the store charges "
          f"ENTRY_OVERHEAD + the key's length + TAG_OVERHEAD and length per tag = {charged} B for it "
          f"({real / charged:.2f}x what it charges)")


# -- main -----------------------------------------------------------------------
def run_async(main: Awaitable[Any]) -> Any:
    """Run on uvloop when it is installed, as the services do."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)  # type: ignore[arg-type]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 purges, one round of 2 s throughput runs, one apply round")
    parser.add_argument("--purges", type=int, default=None, help="purges timed one at a time (default: 200)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per throughput run (default: 5)")
    parser.add_argument("--rounds", type=int, default=None, help="throughput and apply rounds (default: 2 and 3)")
    parser.add_argument("--api-workers", type=int, default=1, help="purge API worker processes (default: 1)")
    parser.add_argument("--xread-reader", metavar="REDIS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.purges = args.purges or (20 if quick else 200)
    args.duration = args.duration or (2.0 if quick else 5.0)
    args.load_rounds = args.rounds or (1 if quick else 2)
    args.apply_rounds = args.rounds or (1 if quick else 3)
    if args.purges < 2 or args.duration <= 0 or min(args.load_rounds, args.apply_rounds) < 1:
        parser.error("--purges must be at least 2, --duration positive, --rounds at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the four measurements and print them; 1 when it could not run, 130 when interrupted."""
    args = parse_args(argv)
    if args.xread_reader:
        run_async(xread_reader(args.xread_reader, args.name))
        return 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill also stops the fleet
    load_at_start = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="purge-bench-") as scratch:
            print(f"starting redis-server, the purge API, {EDGES} edges and {EDGES} baseline readers ...",
                  file=sys.stderr, flush=True)
            with running_fleet(Path(scratch), args.api_workers) as fleet:
                propagation, throughput = run_async(measure_fleet(fleet, args.purges, args.duration, args.load_rounds))
        apply_times = measure_apply(args.apply_rounds)
        print("  memory (tracemalloc) ...", file=sys.stderr, flush=True)
        memory = measure_memory()
    except (BenchError, ServiceStartError, ConnectionClosed) as exc:
        print(f"purge_bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("purge_bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    print(f"\npurge_bench: {os.cpu_count()} CPUs, load {load_at_start:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"Python {sys.version.split()[0]}")
    report_propagation(propagation, args.purges)
    report_throughput(throughput, args.duration, args.load_rounds, args.api_workers)
    report_apply(apply_times, args.apply_rounds)
    report_memory(memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
