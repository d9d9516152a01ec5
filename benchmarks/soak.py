"""A soak: minutes of steady mixed traffic with purges against a real fleet, checking what must not drift.

A redis-server, the origin mock, the purge API, three edges (a small cache, so
it fills and keeps evicting) and the front door run as separate processes on
loopback. Clients on several loopback addresses send a bounded rate of mixed
requests, to the edges directly and through the front door: popular products,
list pages and static assets, a stream of never-repeated URLs, conditional
requests, ranges, HEAD, private carts and missing products. Meanwhile, in a
loop, a product is changed at the origin and purged through the purge API
(tag, URL, prefix or event; hard or soft) with `?wait`, and now and then
something else is purged (static tags, a prefix, everything softly).

Every product answer is kept (edge, send time, version, served stale or not).
After an edge acknowledged a purge made for version V of a product, no read
through that edge sent later may return an older version; after a soft purge,
an older version is allowed only when the edge says it is stale
(stale-while-revalidate). A purge is lost when some edge never applies it.

Before the traffic, every `--sample` seconds, and after the traffic stopped and
idle connections expired, it samples each process: resident memory (VmRSS),
open file descriptors and TCP connections by peer (/proc, so Linux only), and
for each edge its asyncio tasks and store (`/_edge/stats`). At the end it
prints one table and exits 1 if an invariant failed (see `Limits`).

    .venv/bin/python -m benchmarks.soak --minutes 10
    .venv/bin/python -m benchmarks.soak --minutes 1 --rate 100 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.processes import (  # noqa: E402
    HOST,
    Service,
    ServiceStartError,
    free_port,
    spawn,
    spawn_redis,
    stop_all,
    wait_until_listening,
)
from cdn.workload import ConnectionPool, HttpResponse, RequestFailed, Zipf, classify  # noqa: E402
from origin_mock.assets import KINDS, asset_size  # noqa: E402

SITE = "soak.example"  # the Host every request carries (part of the cache key, and of purge URLs)
TOKEN = "soak-token"
ADMIN_TOKEN = "soak-admin"
MIB = 1024 * 1024
START_TIMEOUT = 60.0
PURGE_WAIT = 10.0  # seconds a purge call waits for every edge's acknowledgement
CLIENT_ADDRESSES = [f"127.0.0.{n}" for n in range(20, 28)]
# The shield stays on (its Redis script runs on every origin-bound request), with a limit no
# honest client of this soak reaches: a refusal would be an error here.
SHIELD = {"rules": [{"name": "origin", "key": ["ip"], "scope": "origin", "rate": 100000, "burst": 100000}],
          "trusted_proxies": ["127.0.0.0/8"]}


@dataclass(frozen=True)
class Limits:
    """What the soak allows; every bound is checked at the end."""

    rss_cache_factor: float = 1.1  # peak RSS over the start may be this times the cache size ...
    rss_constant: int = 24 * MIB  # ... plus this (buffers, allocator slack, modules imported on first use)
    rss_drift: int = 8 * MIB  # peak RSS after warm-up over RSS at warm-up (the stores full): no creeping growth
    fd_slack: int = 8  # open descriptors after the traffic and idle expiry, over those before it
    task_slack: int = 3  # asyncio tasks likewise


LIMITS = Limits()


@dataclass
class SoakConfig:
    """How long, how fast, and how big. The defaults are the 10-minute soak's."""

    duration: float = 600.0  # seconds of traffic
    rate: float = 150.0  # requests per second, all clients together (a bounded, steady load)
    concurrency: int = 24  # requests in flight at most
    edges: int = 3
    cache_size: int = 8 * MIB  # each edge's; small, so the stores fill and evict
    router: bool = True  # a share of the traffic goes through the front door
    purge_interval: float = 0.5  # seconds between product changes (each purged with ?wait)
    sample_interval: float = 10.0
    warmup: float = 60.0  # RSS "after warm-up" is the first sample this late with every store full
    idle_wait: float = 4.0  # after the traffic: longer than the 2 s expiry of the edges' and router's idle connections
    products: int = 1000
    changing_products: int = 20  # the most popular ids are the ones changed and purged
    assets: int = 100
    seed: int = 1
    progress: bool = True


# -- the fleet ------------------------------------------------------------------
class SoakError(Exception):
    """The soak cannot go on (the edges never all became live); the message says why."""


@dataclass
class Fleet:
    redis: Service
    origin: Service
    purge_api: Service
    edges: list[Service]
    router: Service | None

    @property
    def services(self) -> list[Service]:
        return [self.redis, self.origin, self.purge_api, *self.edges, *([self.router] if self.router else [])]


@contextlib.contextmanager
def running_fleet(config: SoakConfig, scratch: Path) -> Iterator[Fleet]:
    """Every process started and answering; all stopped on the way out, whatever happens."""
    cdn = [sys.executable, "-m", "cdn"]
    services: list[Service] = []
    try:
        redis = spawn_redis("redis", scratch)
        services.append(redis)
        redis_url = f"redis://{HOST}:{redis.port}/0"
        port = free_port()
        origin = spawn("origin", [*cdn, "origin", "--port", str(port), "--products", str(config.products),
                                  "--assets", str(config.assets), "--seed", str(config.seed)], scratch, port)
        port = free_port()
        api = spawn("purge-api", [*cdn, "purge-api", "--port", str(port), "--redis", redis_url, "--token", TOKEN],
                    scratch, port)
        services += [origin, api]
        edges = []
        for i in range(config.edges):
            port = free_port()
            edges.append(spawn(f"edge-{i}", [
                *cdn, "edge", "--port", str(port), "--origin", origin.url, "--id", f"edge-{i}", "--region", "soak",
                "--redis", redis_url, "--admin-token", ADMIN_TOKEN, "--cache-size", str(config.cache_size),
                "--shield", json.dumps(SHIELD), "--no-access-log"], scratch, port))
        services += edges
        router = None
        if config.router:
            port = free_port()
            front = [{"url": e.url, "id": e.name, "region": "soak"} for e in edges]
            router = spawn("router", [*cdn, "router", "--port", str(port), "--edges", json.dumps(front),
                                      "--health-interval", "0.5"], scratch, port)
            services.append(router)
        deadline = time.monotonic() + START_TIMEOUT
        wait_until_listening(services, START_TIMEOUT)
        fleet = Fleet(redis, origin, api, edges, router)
        asyncio.run(_until_ready(fleet, deadline))
        yield fleet
    finally:
        stop_all(services[::-1], grace=10.0)


async def _until_ready(fleet: Fleet, deadline: float) -> None:
    """Every edge live in the purge API's registry, and the front door sees every edge healthy."""
    api = ConnectionPool(fleet.purge_api.url, timeout=5)
    router = ConnectionPool(fleet.router.url, timeout=5) if fleet.router else None
    try:
        while True:
            with contextlib.suppress(RequestFailed, ValueError):
                edges = json.loads((await api.request("GET", "/edges", _auth(TOKEN))).body)["edges"]
                ready = sum(e["live"] for e in edges) == len(fleet.edges)
                if router is not None and ready:
                    health = json.loads((await router.request("GET", "/_router/health")).body)
                    ready = health["regions"]["soak"]["available"] == len(fleet.edges)
                if ready:
                    return
            if time.monotonic() > deadline:
                raise SoakError("the edges did not all become live (purge API registry, front door health)")
            await asyncio.sleep(0.1)
    finally:
        await api.aclose()
        if router is not None:
            await router.aclose()


def _auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# -- what /proc says about a process --------------------------------------------------
TCP_STATES = {"01": "established", "06": "time-wait", "08": "close-wait", "0A": "listen"}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tcp_sockets() -> dict[int, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, state) for every TCP socket of this network namespace."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
                table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16),
                                TCP_STATES.get(state, state))
    return table


@dataclass
class ProcessSample:
    """One process at one moment: memory, descriptors, and its TCP connections by peer."""

    rss: int
    fds: int
    # "from edge-0", "to redis", "from outside" (not a fleet process: the soak's clients), ...;
    # "close-wait" (the peer closed, this process has not) is counted apart as well.
    connections: dict[str, int]


def socket_inodes(pid: int) -> tuple[int, list[int]]:
    """How many descriptors the process has open, and the inodes of its sockets."""
    fd_dir = Path(f"/proc/{pid}/fd")
    count, inodes = 0, []
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):  # closed meanwhile
            link = os.readlink(fd_dir / fd)
            count += 1
            if link.startswith("socket:["):
                inodes.append(int(link[8:-1]))
    return count, inodes


def sample_processes(services: Sequence[Service]) -> dict[str, ProcessSample]:
    """Every service's memory, descriptors and connections, each connection named by the process at its other end."""
    sockets = tcp_sockets()
    opened = {}
    for service in services:
        try:
            opened[service.name] = socket_inodes(service.pid)
        except OSError:  # it exited (the verdict says so)
            opened[service.name] = (0, [])
    owner = {s.port: s.name for s in services}  # port -> process: listening ports, then every socket's own port
    for name, (_, inodes) in opened.items():
        for inode in inodes:
            if inode in sockets and sockets[inode][2] != "listen":
                owner.setdefault(sockets[inode][0], name)
    samples = {}
    for service in services:
        fds, inodes = opened[service.name]
        connections: Counter[str] = Counter()
        for inode in inodes:
            found = sockets.get(inode)
            if found is None or found[2] == "listen":
                continue  # not TCP (a Unix socket, the event loop's self-pipe), or the listening socket
            local, remote, state = found
            inbound = local == service.port
            peer = owner.get(remote, "outside")
            connections[f"from {peer}" if inbound else f"to {peer}"] += 1
            if state == "close-wait":
                connections["close-wait"] += 1
        rss = 0
        with contextlib.suppress(OSError):
            rss = rss_bytes(service.pid)
        samples[service.name] = ProcessSample(rss, fds, dict(sorted(connections.items())))
    return samples


@dataclass
class Sample:
    """The whole fleet at one moment, `at` seconds after the traffic started (negative: before it)."""

    at: float
    label: str
    processes: dict[str, ProcessSample]
    edges: dict[str, dict[str, Any]]  # edge -> /_edge/stats
    requests: int
    errors: int


async def take_sample(fleet: Fleet, at: float, label: str, requests: int, errors: int) -> Sample:
    """/proc first, then the edges' stats (the stats calls' own connections must not be counted)."""
    processes = sample_processes(fleet.services)
    edges = {}
    for edge in fleet.edges:
        pool = ConnectionPool(edge.url, timeout=10)
        try:
            response = await pool.request("GET", "/_edge/stats", _auth(ADMIN_TOKEN))
            edges[edge.name] = json.loads(response.body)
        except (RequestFailed, ValueError) as exc:
            edges[edge.name] = {"error": str(exc)}
        finally:
            await pool.aclose()
    return Sample(at, label, processes, edges, requests, errors)


# -- traffic ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ask:
    """One request to send and what answers are right for it."""

    kind: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    statuses: frozenset[int]
    body_size: int | None = None  # the exact body length a 200 must have, when known
    range_size: int | None = None  # the exact body length a 206 must have
    product: int | None = None


@dataclass(slots=True)
class ProductRead:
    """One product answer: through which edge, sent when, which version, and whether the edge said it was stale."""

    edge: str
    product: int
    sent: float
    version: int
    stale: bool


# Shares of the request mix.
MIX = {"product": 0.28, "product-conditional": 0.06, "list": 0.06, "static": 0.22, "static-conditional": 0.05,
       "range": 0.05, "unique": 0.17, "head": 0.03, "cart": 0.05, "missing": 0.03}
STATIC = [(kind.name, kind.stem, kind.extension) for kind in KINDS.values()]


class Traffic:
    """Workers sending the mix at a steady rate through per-address keep-alive pools; every answer judged."""

    def __init__(self, config: SoakConfig, targets: dict[str, str]) -> None:
        self.config = config
        self.rng = random.Random(f"{config.seed}-traffic")
        self.products = Zipf(config.products, 1.1)
        self.pages = Zipf(max(1, config.products // 20), 1.1)
        self.assets = Zipf(config.assets, 1.1)
        self.kinds = list(MIX)
        self.weights = list(itertools.accumulate(MIX.values()))
        self.pools = {(address, name): ConnectionPool(url, local_address=address, max_connections=4, timeout=30,
                                                      host=SITE)
                      for address in CLIENT_ADDRESSES for name, url in targets.items()}
        self.targets = list(targets)
        self.unique = itertools.count(1)
        self.etags: dict[str, str] = {}
        self.requests = 0
        self.by_kind: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_examples: list[str] = []
        self.reads: list[ProductRead] = []
        self.late = 0

    def pick(self) -> Ask:
        rng = self.rng
        kind = self.kinds[bisect.bisect_left(self.weights, rng.random() * self.weights[-1])]
        if kind in ("product", "product-conditional"):
            product = self.products.sample(rng)
            target = f"/api/products/{product}"
            etag = self.etags.get(target) if kind == "product-conditional" else None
            headers = (("if-none-match", etag),) if etag else ()
            return Ask(kind, "GET", target, headers, frozenset({200, 304} if etag else {200}), product=product)
        if kind == "list":
            return Ask(kind, "GET", f"/api/products?page={self.pages.sample(rng)}", (), frozenset({200}))
        if kind == "missing":
            missing = self.config.products + rng.randrange(1, 50)
            return Ask(kind, "GET", f"/api/products/{missing}", (), frozenset({404}))
        if kind == "cart":
            return Ask(kind, "GET", "/api/cart", (), frozenset({200}))
        name, stem, extension = STATIC[rng.randrange(len(STATIC))] if kind != "unique" else \
            STATIC[rng.choice((1, 2))]  # unique URLs: style sheets and photos
        number = self.assets.sample(rng) if kind != "unique" else rng.randrange(1, self.config.assets + 1)
        target = f"/static/{stem}-{number}.{extension}"
        size = asset_size(KINDS[name], number)
        if kind == "unique":
            return Ask(kind, "GET", f"{target}?u={next(self.unique)}", (), frozenset({200}), body_size=size)
        if kind == "head":
            return Ask(kind, "HEAD", target, (), frozenset({200}), body_size=0)
        if kind == "range":
            start = rng.randrange(0, size - 1024)
            return Ask(kind, "GET", target, (("range", f"bytes={start}-{start + 1023}"),), frozenset({200, 206}),
                       body_size=size, range_size=1024)
        etag = self.etags.get(target) if kind == "static-conditional" else None
        headers = (("if-none-match", etag),) if etag else ()
        return Ask(kind, "GET", target, headers, frozenset({200, 304} if etag else {200}), body_size=size)

    async def run(self, deadline: float) -> None:
        """`concurrency` workers sharing one schedule of `rate` sends per second until `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        schedule = itertools.count()
        start = loop.time()
        interval = 1.0 / self.config.rate

        async def worker() -> None:
            while True:
                at = start + next(schedule) * interval
                if at >= deadline:
                    return
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0:
                    self.late += 1
                await self.send(self.pick())

        await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))

    async def send(self, ask: Ask) -> None:
        rng = self.rng
        pool = self.pools[(rng.choice(CLIENT_ADDRESSES), rng.choice(self.targets))]
        headers = [("x-client-region", "soak"), ("user-agent", "cdn-soak"), *ask.headers]
        self.requests += 1
        self.by_kind[ask.kind] += 1
        sent = time.time()
        try:
            response = await pool.request(ask.method, ask.target, headers)
        except RequestFailed as exc:
            self.error(ask, f"no answer: {exc}")
            return
        problem = self.judge(ask, response)
        if problem:
            self.error(ask, problem)
            return
        cache_status = response.header("cache-status")
        outcome, _, _ = classify(response.status, cache_status)
        self.outcomes[outcome] += 1
        etag = response.header("etag")
        if etag and response.status == 200 and ask.method == "GET" and "?" not in ask.target:
            self.etags[ask.target] = etag
        if ask.product is not None:
            version = response.header("x-content-version")
            served_by = (response.header("x-served-by") or "").split(";", 1)[0].strip()
            if version and version.isdigit() and served_by:
                self.reads.append(ProductRead(served_by, ask.product, sent, int(version), outcome == "stale"))

    @staticmethod
    def judge(ask: Ask, response: HttpResponse) -> str | None:
        """Why this answer is wrong for this request, or None."""
        if response.status not in ask.statuses:
            return f"status {response.status} ({response.body[:120]!r})"
        if response.status == 200 and ask.body_size is not None and len(response.body) != ask.body_size:
            return f"body of {len(response.body)} bytes, not {ask.body_size}"
        if response.status == 206 and len(response.body) != ask.range_size:
            return f"range body of {len(response.body)} bytes, not {ask.range_size}"
        if ask.product is not None and response.status == 200 and response.header("x-content-version") is None:
            return "product without X-Content-Version"
        return None

    def error(self, ask: Ask, problem: str) -> None:
        self.errors[ask.kind] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{time.strftime('%H:%M:%S')} {ask.method} {ask.target}: {problem}")

    async def aclose(self) -> None:
        for pool in self.pools.values():
            await pool.aclose()


# -- purges ---------------------------------------------------------------------------------
PRODUCT_PURGES = [("tag", False), ("url", False), ("event", False), ("tag", True), ("prefix", False),
                  ("url", True), ("event", True)]
OTHER_PURGES: list[dict[str, Any]] = [
    {"kind": "tag", "values": ["static-css"]},
    {"kind": "prefix", "values": [f"http://{SITE}/static/img/"], "soft": True},
    {"kind": "tag", "values": ["product-lists"]},
    {"kind": "url", "values": [f"http://{SITE}/static/js/app-1.js"]},
    {"kind": "event", "event": "catalog.reloaded", "fields": {}},
    {"kind": "all", "soft": True},
]
OTHER_EVERY = 10  # product changes between two other purges


@dataclass
class PurgeRecord:
    """One logged purge: what it was for, and when each edge applied it (None: not acknowledged yet)."""

    id: str
    kind: str
    soft: bool
    product: int | None
    version: int | None
    acknowledged: bool = False  # every edge applied it within the purge call's wait
    applied: dict[str, float] = field(default_factory=dict)


class Purger:
    """Changes a popular product at the origin and purges it, in a loop; something else now and then."""

    def __init__(self, config: SoakConfig, fleet: Fleet) -> None:
        self.config = config
        self.edges = [e.name for e in fleet.edges]
        self.origin = ConnectionPool(fleet.origin.url, timeout=30)
        self.api = ConnectionPool(fleet.purge_api.url, timeout=PURGE_WAIT + 20)
        self.rng = random.Random(f"{config.seed}-purges")
        self.records: list[PurgeRecord] = []
        self.failed: list[str] = []  # changes or purge calls that did not go through
        self.unacknowledged: Counter[str] = Counter()  # why a purge call answered without every edge's ack

    async def run(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        kinds = itertools.cycle(PRODUCT_PURGES)
        others = itertools.cycle(OTHER_PURGES)
        for cycle in itertools.count(1):
            started = loop.time()
            if started >= deadline:
                return
            await self.change_and_purge(*next(kinds))
            if cycle % OTHER_EVERY == 0:
                other = next(others)
                await self.purge(other, other["kind"], other.get("soft", False), None, None)
            await asyncio.sleep(max(0.0, started + self.config.purge_interval - loop.time()))

    async def change_and_purge(self, kind: str, soft: bool) -> None:
        product = self.rng.randint(1, self.config.changing_products)
        try:
            response = await self.origin.request("PATCH", f"/api/products/{product}",
                                                 [("content-type", "application/json")],
                                                 json.dumps({"price": round(self.rng.uniform(1, 500), 2)}).encode())
        except RequestFailed as exc:
            self.failed.append(f"PATCH product {product}: {exc}")
            return
        version = response.header("x-content-version")
        if response.status != 200 or not version or not version.isdigit():
            self.failed.append(f"PATCH product {product}: status {response.status}")
            return
        url = f"http://{SITE}/api/products/{product}"
        payload: dict[str, Any] = {
            "tag": {"kind": "tag", "values": [f"product-{product}"]},
            "url": {"kind": "url", "values": [url]},
            "prefix": {"kind": "prefix", "values": [url]},
            "event": {"kind": "event", "event": "product.updated", "fields": {"id": product}, "version": int(version)},
        }[kind]
        await self.purge({**payload, "soft": soft}, kind, soft, product, int(version))

    async def purge(self, payload: dict[str, Any], kind: str, soft: bool, product: int | None,
                    version: int | None) -> None:
        try:
            response = await self.api.request("POST", f"/purges?wait={PURGE_WAIT:g}",
                                              [*_auth(TOKEN), ("content-type", "application/json")],
                                              json.dumps(payload).encode())
            answer = json.loads(response.body)
        except (RequestFailed, ValueError) as exc:
            self.failed.append(f"purge {payload}: {exc}")
            return
        if response.status != 200 or "id" not in answer:
            self.failed.append(f"purge {payload}: status {response.status}: {answer}")
            return
        record = PurgeRecord(answer["id"], kind, soft, product, version)
        self.note(record, answer)
        record.acknowledged = set(record.applied) == set(self.edges)
        if not record.acknowledged:
            self.unacknowledged[self.why_not(answer)] += 1
        self.records.append(record)

    def why_not(self, answer: dict[str, Any]) -> str:
        """Why a purge call's answer did not carry every edge's acknowledgement time."""
        applied = answer.get("applied") or {}
        if answer.get("timed_out"):
            return f"wait timed out, pending: {', '.join(answer.get('pending') or []) or 'none'}"
        if any(a.get("at") is None for a in applied.values()):
            return "complete, but an edge listed without an ack time (\"started after the purge\")"
        missing = sorted(set(self.edges) - set(applied))
        return f"complete without {', '.join(missing)} (not live in the registry)"

    @staticmethod
    def note(record: PurgeRecord, answer: dict[str, Any]) -> None:
        for edge, applied in (answer.get("applied") or {}).items():
            if applied.get("at") is not None:
                record.applied[edge] = float(applied["at"])

    async def settle(self) -> None:
        """Ask once more, waiting, about every purge some edge had not acknowledged."""
        for record in self.records:
            if set(record.applied) != set(self.edges):
                with contextlib.suppress(RequestFailed, ValueError):
                    response = await self.api.request("GET", f"/purges/{record.id}?wait={PURGE_WAIT:g}", _auth(TOKEN))
                    self.note(record, json.loads(response.body))

    def lost(self) -> list[PurgeRecord]:
        """Purges some edge never applied."""
        return [r for r in self.records if set(r.applied) != set(self.edges)]

    async def aclose(self) -> None:
        await self.origin.aclose()
        await self.api.aclose()


@dataclass
class Consistency:
    """What the product answers say about purges their edge had acknowledged before they were sent."""

    checked: int = 0  # answers sent after their edge acknowledged some purge made for a change of that product
    stale_allowed: int = 0  # older than a soft purge only, and marked stale by the edge, as a soft purge allows
    stale: list[tuple[ProductRead, PurgeRecord]] = field(default_factory=list)  # older than they may be


def check_consistency(reads: Sequence[ProductRead], purges: Sequence[PurgeRecord]) -> Consistency:
    """After an edge acknowledged a hard purge made for version V, it must never answer with an older
    version; after a soft one, an older version is allowed only when the edge marks it stale."""
    acks: dict[tuple[str, int], list[tuple[float, PurgeRecord]]] = {}  # (edge, product) -> acknowledgements
    for record in purges:
        if record.product is not None and record.version is not None:
            for edge, at in record.applied.items():
                acks.setdefault((edge, record.product), []).append((at, record))
    # For each (edge, product), by acknowledgement time: the purge with the highest version so far, hard and soft.
    newest: dict[tuple[str, int], tuple[list[float], list[PurgeRecord | None], list[PurgeRecord | None]]] = {}
    for key, entries in acks.items():
        entries.sort(key=lambda e: e[0])
        hard: list[PurgeRecord | None] = []
        soft: list[PurgeRecord | None] = []
        best: dict[bool, PurgeRecord | None] = {False: None, True: None}
        for _, record in entries:
            current = best[record.soft]
            if current is None or (record.version or 0) > (current.version or 0):
                best[record.soft] = record
            hard.append(best[False])
            soft.append(best[True])
        newest[key] = ([at for at, _ in entries], hard, soft)
    result = Consistency()
    for read in reads:
        found = newest.get((read.edge, read.product))
        if found is None:
            continue
        times, hard, soft = found
        i = bisect.bisect_left(times, read.sent)  # acknowledged strictly before the answer was asked for
        if i == 0:
            continue
        result.checked += 1
        last_hard, last_soft = hard[i - 1], soft[i - 1]
        if last_hard is not None and read.version < (last_hard.version or 0):
            result.stale.append((read, last_hard))
        elif last_soft is not None and read.version < (last_soft.version or 0):
            if read.stale:
                result.stale_allowed += 1
            else:
                result.stale.append((read, last_soft))
    return result


# -- the run -------------------------------------------------------------------------------
@dataclass
class SoakResult:
    """Everything one soak counted and sampled, and the invariants it found broken (`failures`)."""

    config: SoakConfig
    limits: Limits
    duration: float
    requests: int
    by_kind: dict[str, int]
    outcomes: dict[str, int]
    errors: int
    error_examples: list[str]
    late_sends: int
    purges_sent: int
    purges_acknowledged: int
    unacknowledged: dict[str, int]  # why the others were not, by reason (they were asked about again at the end)
    purges_lost: int
    purge_failures: list[str]
    applied_counts: dict[str, int]  # edge -> purges applied during the run (its counter)
    product_reads: int
    reads_checked: int  # product answers sent after their edge acknowledged a purge of that product
    stale_allowed: int  # older, after a soft purge, marked stale by the edge
    stale: list[str]
    samples: list[Sample]
    warm: Sample | None
    failures: list[str] = field(default_factory=list)

    def start(self) -> Sample:
        return self.samples[0]

    def end(self) -> Sample:
        return self.samples[-1]


async def drive(config: SoakConfig, fleet: Fleet) -> SoakResult:
    """Sample, run traffic and purges until the end, let connections idle out, sample again, judge."""
    targets = {e.name: e.url for e in fleet.edges}
    if fleet.router is not None:
        targets["router"] = fleet.router.url
    traffic = Traffic(config, targets)
    purger = Purger(config, fleet)
    samples = [await take_sample(fleet, -1.0, "start", 0, 0)]
    applied_before = {name: s.get("counters", {}).get("purges_applied", 0) for name, s in samples[0].edges.items()}
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + config.duration

    async def sampler() -> None:
        while True:
            await asyncio.sleep(config.sample_interval)
            sample = await take_sample(fleet, loop.time() - started, "", traffic.requests, sum(traffic.errors.values()))
            samples.append(sample)
            if config.progress:
                print(progress_line(sample, config), flush=True)

    sampling = asyncio.create_task(sampler())
    try:
        await asyncio.gather(traffic.run(deadline), purger.run(deadline))
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    duration = loop.time() - started
    samples.append(await take_sample(fleet, duration, "traffic end", traffic.requests, sum(traffic.errors.values())))
    await purger.settle()
    await traffic.aclose()
    await purger.aclose()
    await asyncio.sleep(config.idle_wait)
    sweep_problems = await use_every_pool_once(fleet)
    await asyncio.sleep(0.5)  # for the servers to see the sweep's connections closed
    samples.append(await take_sample(fleet, loop.time() - started, "end", traffic.requests,
                                     sum(traffic.errors.values())))
    end = samples[-1]
    applied = {name: s.get("counters", {}).get("purges_applied", 0) - applied_before[name]
               for name, s in end.edges.items()}
    consistency = check_consistency(traffic.reads, purger.records)
    result = SoakResult(
        config=config, limits=LIMITS, duration=duration, requests=traffic.requests, by_kind=dict(traffic.by_kind),
        outcomes=dict(traffic.outcomes), errors=sum(traffic.errors.values()) + len(sweep_problems),
        error_examples=traffic.error_examples + sweep_problems,
        late_sends=traffic.late, purges_sent=len(purger.records),
        purges_acknowledged=sum(r.acknowledged for r in purger.records), unacknowledged=dict(purger.unacknowledged),
        purges_lost=len(purger.lost()),
        purge_failures=purger.failed, applied_counts=applied, product_reads=len(traffic.reads),
        reads_checked=consistency.checked, stale_allowed=consistency.stale_allowed,
        stale=[f"{read.edge} product {read.product} v{read.version} sent {read.sent - purge.applied[read.edge]:.3f} s "
               f"after it acknowledged {'soft ' if purge.soft else ''}{purge.kind} purge {purge.id} for "
               f"v{purge.version}{' (not marked stale)' if purge.soft else ''}" for read, purge in consistency.stale],
        samples=samples, warm=warm_sample(samples, config))
    result.failures = broken_invariants(result, fleet)
    return result


async def use_every_pool_once(fleet: Fleet) -> list[str]:
    """A miss through each edge, directly and through the front door (until it reached every edge); what went wrong.

    The edges' and the front door's client pools drop connections idle past their
    expiry when they are next used, not by a timer: after this, what they still
    hold is what one request each left, not what the traffic left.
    """
    problems = []
    routes = [(e.url, 1) for e in fleet.edges] + ([(fleet.router.url, 50)] if fleet.router else [])
    for n, (base, most) in enumerate(routes):
        pool = ConnectionPool(base, timeout=30, host=SITE)
        reached: set[str] = set()
        try:
            for i in range(most):
                response = await pool.request("GET", f"/static/css/site-1.css?idle-sweep={n}-{i}",
                                              [("x-client-region", "soak")])
                if response.status != 200:
                    problems.append(f"idle sweep through {base}: status {response.status}")
                reached.add((response.header("x-served-by") or "").split(";", 1)[0])
                if len(reached) == len(fleet.edges):
                    break
        except RequestFailed as exc:
            problems.append(f"idle sweep through {base}: {exc}")
        finally:
            await pool.aclose()
    return problems


def warm_sample(samples: Sequence[Sample], config: SoakConfig) -> Sample | None:
    """The first sample at least `warmup` into the traffic with every store full (it has evicted)."""
    for sample in samples[1:]:
        if sample.label == "" and sample.at >= config.warmup and all(
                s.get("store", {}).get("evictions", 0) > 0 for s in sample.edges.values()):
            return sample
    return None


def broken_invariants(result: SoakResult, fleet: Fleet) -> list[str]:
    """Every invariant the soak checks that does not hold, in words."""
    limits, config = result.limits, result.config
    failures = []
    if result.errors:
        failures.append(f"{result.errors} requests failed or got a wrong answer")
    if result.purge_failures:
        failures.append(f"{len(result.purge_failures)} product changes or purge calls failed")
    if result.purges_lost:
        failures.append(f"{result.purges_lost} purges were not applied by every edge")
    for edge, count in result.applied_counts.items():
        if count != result.purges_sent:
            failures.append(f"{edge} applied {count} purges, {result.purges_sent} were logged")
    if result.stale:
        failures.append(f"{len(result.stale)} answers older than a purge their edge had acknowledged")
    if result.warm is None:
        failures.append(f"the stores were never all full after {config.warmup:g} s: the cache bound was not tested")
    start, end = result.start(), result.end()
    for service in fleet.services:
        name = service.name
        if service.process.poll() is not None:
            failures.append(f"{name} exited with status {service.process.returncode}:\n{service.log_tail()}")
            continue
        before, after = start.processes[name], end.processes[name]
        # Redis is exempt from the descriptor bound: each of its connections is a client's, bounded there.
        if service is not fleet.redis and after.fds > before.fds + limits.fd_slack:
            failures.append(f"{name}: {after.fds} open descriptors after, {before.fds} before "
                            f"(connections after: {after.connections})")
        if after.connections.get("from outside", 0) or after.connections.get("close-wait", 0):
            failures.append(f"{name}: connections left after the clients closed theirs: {after.connections}")
    # Once warm, nothing grows: the edges' stores are full, and the front door and purge API hold no cache.
    # (Redis holds the purge log and the origin its asset bodies, both growing to their own bounds.)
    for service in [*fleet.edges, fleet.purge_api, *([fleet.router] if fleet.router else [])]:
        if result.warm is not None:
            name = service.name
            warm = result.warm.processes[name].rss
            later = max(s.processes[name].rss for s in result.samples if s.at >= result.warm.at)
            if later > warm + limits.rss_drift:
                failures.append(f"{name}: RSS grew {(later - warm) / MIB:.1f} MiB after warm-up "
                                f"(allowed {limits.rss_drift / MIB:g} MiB)")
    for edge in fleet.edges:
        name = edge.name
        peak = max(s.processes[name].rss for s in result.samples)
        allowed = start.processes[name].rss + limits.rss_cache_factor * config.cache_size + limits.rss_constant
        if peak > allowed:
            failures.append(f"{name}: peak RSS {peak / MIB:.1f} MiB over {allowed / MIB:.1f} MiB "
                            f"(start + {limits.rss_cache_factor:g} x cache + {limits.rss_constant / MIB:g} MiB)")
        tasks_before, tasks_after = start.edges[name].get("tasks"), end.edges[name].get("tasks")
        if tasks_before is None or tasks_after is None:
            failures.append(f"{name}: no task count in /_edge/stats")
        elif tasks_after > tasks_before + limits.task_slack:
            failures.append(f"{name}: {tasks_after} asyncio tasks after, {tasks_before} before")
        pending = {k: end.edges[name].get(k) for k in ("in_flight", "fetches", "refreshes")}
        if any(pending.values()):
            failures.append(f"{name}: work left after the traffic: {pending}")
    return failures


# -- output -------------------------------------------------------------------------------
def _mib(n: float) -> str:
    return f"{n / MIB:.1f}"


def progress_line(sample: Sample, config: SoakConfig) -> str:
    edges = "  ".join(f"{name} rss {_mib(sample.processes[name].rss)} MiB store "
                      f"{_mib(s.get('store', {}).get('bytes', 0))}/{_mib(config.cache_size)} tasks {s.get('tasks')}"
                      for name, s in sample.edges.items())
    return f"[{sample.at:6.0f} s] requests {sample.requests:,} errors {sample.errors}  {edges}"


def render(result: SoakResult, fleet_names: Sequence[str]) -> str:
    """The table: traffic and purges, then each process before, after warm-up and at the end, then the verdict."""
    config, limits = result.config, result.limits
    start, end, warm = result.start(), result.end(), result.warm
    lines = [
        f"soak: {result.duration:.0f} s of traffic at {config.rate:g} req/s target, {config.edges} edges with "
        f"{_mib(config.cache_size)} MiB caches{', front door' if config.router else ''}; load average "
        f"{os.getloadavg()[0]:.2f}",
        "",
        f"{'requests':<44}{result.requests:>10,}   ({result.requests / result.duration:.0f}/s; "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(result.outcomes.items()))
        + (f"; {result.late_sends:,} sent over 1 s late" if result.late_sends else "") + ")",
        f"{'errors (wrong status or body, no answer)':<44}{result.errors:>10,}",
        f"{'purges sent (logged)':<44}{result.purges_sent:>10,}   "
        f"(+{len(result.purge_failures)} calls failed)",
        f"{'purges acknowledged by every edge in ?wait':<44}{result.purges_acknowledged:>10,}",
        f"{'purges lost (some edge never applied it)':<44}{result.purges_lost:>10,}",
        f"{'product answers checked against an ack':<44}{result.reads_checked:>10,}   "
        f"(of {result.product_reads:,}; {result.stale_allowed:,} older but marked stale after a soft purge: allowed)",
        f"{'stale after an acknowledged purge':<44}{len(result.stale):>10,}",
        "",
        f"{'process':<11}{'RSS start':>10}{'warm':>8}{'peak':>8}{'end':>8}{'growth/cache':>14}"
        f"{'fds':>10}{'tasks':>10}  connections at the end",
    ]
    for name in fleet_names:
        series = [s.processes[name].rss for s in result.samples]
        before, after = start.processes[name], end.processes[name]
        growth = (max(series) - before.rss) / config.cache_size
        tasks = ""
        if name in start.edges:
            tasks = f"{start.edges[name].get('tasks')}->{end.edges[name].get('tasks')}"
        lines.append(f"{name:<11}{_mib(before.rss):>10}{_mib(warm.processes[name].rss) if warm else '-':>8}"
                     f"{_mib(max(series)):>8}{_mib(after.rss):>8}{growth:>14.2f}{f'{before.fds}->{after.fds}':>10}"
                     f"{tasks:>10}  {', '.join(f'{k} {v}' for k, v in after.connections.items()) or '-'}")
    lines.append("(MiB; growth/cache: peak RSS minus start over the configured cache size)")
    lines.append("")
    for name, stats in end.edges.items():
        store = stats.get("store", {})
        lines.append(f"{name}: store {_mib(store.get('bytes', 0))}/{_mib(store.get('capacity', 0))} MiB, "
                     f"{store.get('objects', 0):,} objects, {store.get('evictions', 0):,} evictions, "
                     f"{result.applied_counts.get(name, 0):,} purges applied")
    warm_at = f"at {warm.at:.0f} s" if warm else "never reached"
    lines += [f"limits: edges' peak RSS <= start + {limits.rss_cache_factor:g} x cache + "
              f"{limits.rss_constant / MIB:g} MiB; edges, front door, purge API: peak RSS after warm-up ({warm_at}) "
              f"<= RSS then + {limits.rss_drift / MIB:g} MiB;",
              f"        {config.idle_wait:g} s after the clients closed their connections (and one request through "
              f"each pool): no connection from outside or in close-wait, fds <= start + {limits.fd_slack} "
              f"(not Redis), edges' tasks <= start + {limits.task_slack}"]
    if result.unacknowledged:
        lines += ["", "purge calls answered without every edge's ack time (asked again at the end):",
                  *(f"  {n:,}: {why}" for why, n in sorted(result.unacknowledged.items(), key=lambda i: -i[1]))]
    if result.error_examples:
        lines += ["", "errors, first ones:", *(f"  {e}" for e in result.error_examples)]
    if result.purge_failures:
        lines += ["", "failed changes or purge calls:", *(f"  {e}" for e in result.purge_failures[:10])]
    if result.stale:
        lines += ["", "stale answers, first ones:", *(f"  {s}" for s in result.stale[:10])]
    lines += ["", "PASS: every invariant held" if not result.failures else
              "FAIL:\n" + "\n".join(f"  {f}" for f in result.failures)]
    return "\n".join(lines)


def run_soak(config: SoakConfig, scratch: Path | None = None) -> tuple[SoakResult, str]:
    """Start the fleet, soak it, stop it; the result and its table."""
    with contextlib.ExitStack() as stack:
        if scratch is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cdn-soak-")))
        with running_fleet(config, scratch) as fleet:
            result = asyncio.run(drive(config, fleet))
            return result, render(result, [s.name for s in fleet.services])
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of traffic (default 10)")
    parser.add_argument("--rate", type=float, default=SoakConfig.rate, help="requests per second (default 150)")
    parser.add_argument("--edges", type=int, default=SoakConfig.edges)
    parser.add_argument("--cache-mib", type=float, default=SoakConfig.cache_size / MIB, help="each edge's cache")
    parser.add_argument("--sample", type=float, default=SoakConfig.sample_interval, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before the warm-up sample "
                        "(default: 60, or a quarter of a shorter run)")
    parser.add_argument("--no-router", action="store_true", help="send everything to the edges directly")
    parser.add_argument("--json", type=Path, help="write the result, every sample included, to this file")
    args = parser.parse_args(argv)
    duration = args.minutes * 60
    config = SoakConfig(duration=duration, rate=args.rate, edges=args.edges, cache_size=int(args.cache_mib * MIB),
                        router=not args.no_router, sample_interval=args.sample,
                        warmup=args.warmup if args.warmup is not None else min(60.0, duration / 4))
    try:
        result, table = run_soak(config)
    except (SoakError, ServiceStartError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    print(table)
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=1, default=str))
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
