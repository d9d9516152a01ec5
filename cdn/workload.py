"""The workload generator: simulated clients in several regions against a CDN's front door, and what it measured.

    Workload(config, front_door, origin, purge_api, purge_token).run()  ->  Trace  ->  Trace.to_report()

Ordinary clients (a few per region, each from its own loopback address) ask
for Zipf-popular products, list pages and static assets, plus a small share of
uncacheable carts, at a Poisson-paced total rate (open loop: a slow answer does
not slow the schedule). A few abusive clients send far faster, one of them
busting the cache with random query strings. Product changes go straight to
the origin, which purges through the purge API; the workload polls each purge
until every edge acknowledged it. Every request is recorded; the report
compares what reached the origin with what an ideal cache would have needed,
and checks that nothing older than an acknowledged purge was served.

The report (`Trace.to_report()`), a JSON-able dict; times are seconds since
the epoch unless named `_ms` or `t`, ratios are 0..1, None means unknown:

    schema              "cdn-workload-report/1"
    run                 started_at, duration_s (sending), wall_s (with the drain after it), front_door, origin,
                        purge_api, config (WorkloadConfig as a dict)
    requests            total, hit, stale, miss, pass, refused, error (total is their sum), hits (hit + stale),
                        hit_ratio (hits / (hits + miss)), bytes (bodies delivered to clients)
    by_edge, by_region  name -> the same counters; an edge is named by X-Served-By, else its Cache-Status
                        member, else X-Routed-To; a region is the client's (X-Client-Region)
    clients             [{address, region, kind: ordinary | abusive | cache-busting, requests, refused, hit_ratio}]
    origin              requests, bytes (origin answers for CDN traffic, from /_origin/stats, product changes
                        excluded), changes, offload_requests, offload_bytes (1 - origin / client)
    ideal               shared_cache and per_edge_cache: {origin_fetches, offload, forced_by: {first, expiry,
                        purge, uncacheable}}, plus per_edge_cache.by_edge; achieved_of_best (offload /
                        shared_cache.offload), achieved_of_best_per_edge
    latency             client_to_edge_ms {count, p50, p95, p99}, by_region and by_outcome (same shape),
                        histogram {bounds_ms (len n+1), counts (len n)}, modelled_origin_ms {region: ms}
                        (ordinary clients' answered requests only)
    purges              changes, acknowledged (complete), incomplete, propagation_ms {count, p50, p99} (each
                        edge's ack after the purge was logged), complete_ms {count, p50, p99} (the last edge's)
    stale               older_than_acknowledged_purge (must be 0), by_reason {Cache-Status detail: n},
                        examples (up to 5 offending requests)
    shield              refused, by_status {"429": n}, by_client {address: n}
    timeline            [{t, requests, hit, stale, miss, pass, refused, error, hit_ratio, origin_requests}]
                        one per second from the start to the last send; origin_requests interpolated from
                        the stats polls
    generator           target_rate, abusive_rate, achieved_rate, late_sends (sent > 100 ms after their
                        scheduled time), skipped (not sent at all: no free slot within max_lag), max_lag_ms;
                        either means the concurrency bound or this machine, not only the CDN, set the pace
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit

import h11

SCHEMA = "cdn-workload-report/1"
OUTCOMES = ("hit", "stale", "miss", "pass", "refused", "error")
STATIC_KINDS = (("js", "js/app", "js"), ("css", "css/site", "css"), ("img", "img/photo", "jpg"))
CACHE_BUSTER = "cb"
REFUSED_STATUSES = frozenset({429, 403})
LATE_AFTER = 0.1  # seconds behind schedule before a send counts as late
HISTOGRAM_BOUNDS_MS = tuple(round(0.1 * 10 ** (i / 10), 4) for i in range(51))  # 0.1 ms .. 10 s, 10 bins a decade


# -- configuration -----------------------------------------------------------------------------------


@dataclass
class AbusiveClient:
    """A client far over any fair rate; with `cache_busting`, each URL gets a random `?cb=` query."""

    rate: float = 60.0
    cache_busting: bool = False
    region: str | None = None  # None: the first region


@dataclass
class WorkloadConfig:
    """What to send, how fast and for how long. The defaults make a run of about a minute."""

    duration: float = 60.0
    rate: float = 150.0  # requests per second from ordinary clients, all regions together
    regions: dict[str, float] = field(default_factory=lambda: {"us-east": 0.4, "eu-west": 0.35, "ap-northeast": 0.25})
    clients_per_region: int = 3
    products: int = 1000  # ids 1..products, as many as the origin has
    page_size: int = 20  # products per list page, as the origin pages them
    assets: int = 100  # static assets per kind (js, css, img), numbered 1..assets
    zipf_s: float = 1.1
    mix: dict[str, float] = field(default_factory=lambda: {"product": 0.50, "list": 0.08, "static": 0.40, "cart": 0.02})
    static_mix: dict[str, float] = field(default_factory=lambda: {"js": 0.25, "css": 0.25, "img": 0.50})
    change_rate: float = 0.2  # product changes per second, PATCHed at the origin
    change_tags: tuple[str, ...] = ("product-{id}", "product-lists")  # what a change purges when its ack is unknown
    abusive: list[AbusiveClient] = field(default_factory=lambda: [AbusiveClient(60.0), AbusiveClient(60.0, cache_busting=True)])
    concurrency: int = 128  # requests in flight at most, all clients together
    connections_per_client: int = 16
    timeout: float = 10.0  # per request
    max_lag: float = 2.0  # a request not sent within this long of its time is skipped (counted), so a run ends on time
    ack_timeout: float = 15.0  # how long to keep asking whether a purge is complete
    host: str | None = None  # Host header; None: the front door's
    first_address: int = 10  # ordinary clients send from 127.0.0.<first_address>, 127.0.0.<first_address + 1>, ...
    first_abusive_address: int = 200
    seed: int = 1

    def __post_init__(self) -> None:
        if self.duration <= 0 or self.rate <= 0:
            raise ValueError("duration and rate must be positive")
        if not self.regions or any(share < 0 for share in self.regions.values()) or sum(self.regions.values()) <= 0:
            raise ValueError("regions need non-negative shares with a positive sum")
        if set(self.mix) - {"product", "list", "static", "cart"} or sum(self.mix.values()) <= 0:
            raise ValueError("mix takes shares of product, list, static and cart")
        if self.clients_per_region < 1 or self.concurrency < 1:
            raise ValueError("clients_per_region and concurrency must be at least 1")
        if self.first_address + len(self.regions) * self.clients_per_region > 255 or \
                self.first_abusive_address + len(self.abusive) > 255:
            raise ValueError("too many clients for 127.0.0.0/24")


# -- popularity and requests -------------------------------------------------------------------------


class Zipf:
    """Ranks 1..n drawn with probability proportional to 1 / rank**s."""

    def __init__(self, n: int, s: float) -> None:
        weights = [1.0 / rank**s for rank in range(1, n + 1)]
        self.cumulative = list(itertools.accumulate(weights))

    def sample(self, rng: random.Random) -> int:
        """One rank, 1 the most popular."""
        return bisect.bisect_left(self.cumulative, rng.random() * self.cumulative[-1]) + 1


class Weighted:
    """Names drawn by their shares."""

    def __init__(self, shares: Mapping[str, float]) -> None:
        self.names = [name for name, share in shares.items() if share > 0]
        self.cumulative = list(itertools.accumulate(shares[name] for name in self.names))

    def sample(self, rng: random.Random) -> str:
        """One name."""
        return self.names[bisect.bisect_left(self.cumulative, rng.random() * self.cumulative[-1])]


class RequestPicker:
    """What a client asks for next: a kind by the mix, then an object by popularity."""

    def __init__(self, config: WorkloadConfig) -> None:
        self.kinds = Weighted(config.mix)
        self.static_kinds = Weighted(config.static_mix)
        self.products = Zipf(config.products, config.zipf_s)
        self.pages = Zipf(max(1, math.ceil(config.products / config.page_size)), config.zipf_s)
        self.assets = Zipf(config.assets, config.zipf_s)
        self.static_paths = {name: f"/static/{stem}-{{n}}.{ext}" for name, stem, ext in STATIC_KINDS}

    def pick(self, rng: random.Random) -> tuple[str, str]:
        """(kind, URL key): the path and the query that selects the object."""
        kind = self.kinds.sample(rng)
        if kind == "product":
            return kind, f"/api/products/{self.products.sample(rng)}"
        if kind == "list":
            return kind, f"/api/products?page={self.pages.sample(rng)}"
        if kind == "static":
            return kind, self.static_paths[self.static_kinds.sample(rng)].format(n=self.assets.sample(rng))
        return kind, "/api/cart"


def bust(url_key: str, rng: random.Random) -> str:
    """The URL with a random cache-busting query parameter added."""
    return f"{url_key}{'&' if '?' in url_key else '?'}{CACHE_BUSTER}={rng.getrandbits(48):012x}"


def url_key(target: str) -> str:
    """The object a target names: its path and query without the cache-busting parameter."""
    parts = urlsplit(target)
    if not parts.query:
        return parts.path
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != CACHE_BUSTER]
    return f"{parts.path}?{urlencode(query)}" if query else parts.path


def object_tags(key: str) -> frozenset[str]:
    """The surrogate keys the origin mock gives an object (edges strip them, so the workload knows them itself)."""
    path = key.partition("?")[0]
    if path.startswith("/api/products/"):
        return frozenset({"products", f"product-{path.rsplit('/', 1)[1]}"})
    if path == "/api/products":
        return frozenset({"products", "product-lists"})
    if path.startswith("/static/"):
        kind = next((name for name, stem, _ in STATIC_KINDS if path.startswith(f"/static/{stem}-")), "other")
        return frozenset({"static", f"static-{kind}"})
    return frozenset()


def product_id(key: str) -> int | None:
    """The id of a single product's URL key, else None."""
    head, _, tail = key.rpartition("/")
    return int(tail) if head == "/api/products" and tail.isdigit() else None


# -- reading answers ---------------------------------------------------------------------------------


def parse_cache_status(value: str | None) -> list[tuple[str, dict[str, str]]]:
    """Cache-Status members (RFC 9211), origin-side first: (cache name, {parameter: value or ""})."""
    members: list[tuple[str, dict[str, str]]] = []
    for member in (value or "").split(","):
        name, *params = (part.strip() for part in member.split(";"))
        if not name:
            continue
        parsed: dict[str, str] = {}
        for param in params:
            key, _, val = param.partition("=")
            parsed[key.strip().lower()] = val.strip().strip('"')
        members.append((name.strip('"'), parsed))
    return members


def classify(status: int, cache_status: str | None) -> tuple[str, str | None, str | None]:
    """(outcome, cache name, detail) of one answer, from the member of the cache nearest the client; 429/403 are the shield's."""
    members = parse_cache_status(cache_status)
    name, params = members[-1] if members else (None, {})
    detail = params.get("detail") or None
    if status in REFUSED_STATUSES:
        return "refused", name, detail
    if not members:
        return ("error" if status >= 500 else "pass"), None, None
    if "hit" in params:
        return ("stale" if detail else "hit"), name, detail  # the edge gives a hit a detail only when it is stale
    forwarded = params.get("fwd")
    if status >= 500:
        return "error", name, detail
    if forwarded in ("bypass", "method") or (forwarded and detail and "stored" not in params and "collapsed" not in params):
        return "pass", name, detail
    return "miss", name, detail


def freshness_lifetime(cache_control: str | None) -> float:
    """Seconds a shared cache may reuse a response with this Cache-Control (0: not at all)."""
    directives: dict[str, str] = {}
    for part in (cache_control or "").split(","):
        key, _, value = part.strip().partition("=")
        directives[key.strip().lower()] = value.strip().strip('"')
    if {"no-store", "private", "no-cache"} & directives.keys():
        return 0.0
    for name in ("s-maxage", "max-age"):
        if directives.get(name, "").isdigit():
            return float(directives[name])
    return 0.0


# -- a small HTTP/1.1 client ---------------------------------------------------------------------------


class RequestFailed(Exception):
    """No complete answer: `reason` is connect, connection or timeout."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class HttpResponse(NamedTuple):
    """A complete answer: status, header fields (lower-case names) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The field's value (repeated fields joined by commas), or None."""
        wanted = name.lower().encode()
        values = [value.decode("latin-1") for key, value in self.headers if key == wanted]
        return ", ".join(values) if values else None


class _Connection:
    """One keep-alive connection: asyncio streams and an h11 state machine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.answered = False  # a response started on this connection, for the current request

    async def exchange(self, request: h11.Request, body: bytes) -> HttpResponse:
        self.answered = False
        out = self.h11.send(request) or b""
        if body:
            out += self.h11.send(h11.Data(data=body)) or b""
        self.writer.write(out + (self.h11.send(h11.EndOfMessage()) or b""))
        await self.writer.drain()
        status, headers, chunks = 0, [], []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Response):
                self.answered = True
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return HttpResponse(status, headers, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("server closed the connection before answering")

    def reusable(self) -> bool:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE and not self.reader.at_eof():
            self.h11.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        self.writer.close()


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to one server, optionally from one source address."""

    IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

    def __init__(self, base_url: str, local_address: str | None = None, max_connections: int = 16,
                 timeout: float = 10.0, host: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"an http:// URL is needed, not {base_url!r}")
        self.address = (parts.hostname, parts.port or 80)
        self.base_path = parts.path.rstrip("/")
        self.authority = host or parts.netloc
        self.local_address = local_address
        self.timeout = timeout
        self.opened = 0
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def request(self, method: str, target: str, headers: Iterable[tuple[str, str]] = (),
                      body: bytes = b"") -> HttpResponse:
        """Send one request and read the whole answer; RequestFailed when none came."""
        fields = [("host", self.authority), *headers]
        if body or method in ("POST", "PUT", "PATCH"):
            fields.append(("content-length", str(len(body))))
        request = h11.Request(method=method, target=self.base_path + target, headers=fields)
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._exchange(request, body, method in self.IDEMPOTENT)
            except TimeoutError:
                raise RequestFailed("timeout", f"{method} {target}: no complete answer in {self.timeout:g} s") from None

    async def _exchange(self, request: h11.Request, body: bytes, may_retry: bool) -> HttpResponse:
        while True:
            connection = None
            while self._idle and connection is None:
                connection = self._idle.pop()
                if connection.reader.at_eof():  # the server closed it while it was idle
                    connection.close()
                    connection = None
            reused = connection is not None
            connection = connection or await self._connect()
            try:
                response = await connection.exchange(request, body)
            except (OSError, h11.ProtocolError) as exc:
                connection.close()
                # The server may close an idle keep-alive connection just as we reuse it: ask once more.
                if reused and may_retry and not connection.answered:
                    may_retry = False
                    continue
                raise RequestFailed("connection", f"{exc.__class__.__name__}: {exc}") from exc
            except BaseException:
                connection.close()  # cancelled or timed out half-way: its state is unknown
                raise
            if connection.reusable():
                self._idle.append(connection)
            else:
                connection.close()
            return response

    async def _connect(self) -> _Connection:
        local = (self.local_address, 0) if self.local_address else None
        try:
            reader, writer = await asyncio.open_connection(*self.address, local_addr=local)
        except OSError as exc:
            raise RequestFailed("connect", f"{self.address[0]}:{self.address[1]} from {self.local_address}: {exc}") from exc
        self.opened += 1
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        """Close the idle connections."""
        while self._idle:
            self._idle.pop().close()


# -- what was recorded -------------------------------------------------------------------------------


@dataclass(slots=True)
class RequestRecord:
    """One request and what came back."""

    sent: float  # wall clock, seconds since the epoch
    latency: float  # seconds; for a failed request, until it failed
    client: str  # source address
    region: str
    kind: str  # product | list | static | cart
    url_key: str  # path and query without the cache buster
    status: int  # 0: no answer
    outcome: str  # one of OUTCOMES
    edge: str | None
    detail: str | None  # Cache-Status detail, or why no answer came
    bytes: int
    version: int | None  # X-Content-Version of a product
    abusive: bool = False
    target: str = ""  # as sent, cache buster included: what the cache keys on


@dataclass
class PurgeAck:
    """What the purge API said about one purge when the workload stopped asking."""

    purge_id: str
    created_at: float
    complete: bool
    applied: dict[str, float | None]  # edge -> when it applied the purge (None: started after it)
    tags: tuple[str, ...]

    @property
    def completed_at(self) -> float | None:
        """When the last edge applied it, if all did."""
        if not self.complete:
            return None
        return max((at for at in self.applied.values() if at is not None), default=self.created_at)


@dataclass
class Change:
    """One product change sent to the origin."""

    sent: float
    product_id: int
    status: int
    version: int | None
    purge_id: str | None
    response_bytes: int = 0
    ack: PurgeAck | None = None


@dataclass
class OriginSample:
    """The origin's request counters at one moment."""

    at: float
    total: int
    writes: int  # PUT and PATCH: product changes, not CDN traffic
    bytes_sent: int


@dataclass
class Progress:
    """What the live progress line shows, once a second."""

    elapsed: float
    requests: int
    hit_ratio: float | None
    origin_rps: float | None
    refused: int
    errors: int
    changes: int


@dataclass
class ClientInfo:
    """One simulated client: its source address, region and behaviour."""

    address: str
    region: str
    kind: str  # ordinary | abusive | cache-busting


@dataclass
class Trace:
    """Everything one run recorded; `to_report()` turns it into the report."""

    config: WorkloadConfig
    front_door: str
    origin: str | None
    purge_api: str | None
    started: float
    ended: float = 0.0
    clients: list[ClientInfo] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    origin_samples: list[OriginSample] = field(default_factory=list)
    ttls: dict[str, float] = field(default_factory=dict)  # URL key -> freshness lifetime of its first answer
    late_sends: int = 0
    skipped: int = 0  # not sent: no free slot within `max_lag` of their time, or still waiting at the end
    max_lag: float = 0.0

    def to_report(self, modelled_origin_ms: Mapping[str, float] | None = None) -> dict[str, Any]:
        """The report dict described in the module docstring."""
        return build_report(self, modelled_origin_ms or {})


# -- analysis: pure functions of the trace ------------------------------------------------------------


class Lookup(NamedTuple):
    """A request an ideal cache must answer: when, for which object, from which cache."""

    at: float
    key: str
    cache: str  # which cache would serve it
    answered_at: float | None = None  # when its answer came back (None: at once)


class Invalidation(NamedTuple):
    """A purge as an ideal cache sees it: when, and which tags."""

    at: float
    tags: frozenset[str]


def ideal_origin_fetches(lookups: Iterable[Lookup], ttls: Mapping[str, float], invalidations: Iterable[Invalidation],
                         tags_of: Callable[[str], frozenset[str]] = object_tags) -> tuple[Counter[str], Counter[str]]:
    """Fewest origin fetches ideal caches need for these lookups: (by cache, by reason: first, expiry, purge, uncacheable).

    An ideal cache keeps everything it fetched until its freshness lifetime ends
    or a purge names one of its tags; an object with a lifetime of 0 is fetched
    every time, and one with no known lifetime (never answered well) is kept
    until purged, so the count stays a lower bound. For the same reason a lookup
    counts from when it was sent, and a fetched copy's lifetime from when its
    answer came back: a real cache looks later and stores earlier. A purge at
    the same instant as a lookup comes first.
    """
    events = sorted([(inv.at, 0, inv) for inv in invalidations] + [(lk.at, 1, lk) for lk in lookups],
                    key=lambda e: (e[0], e[1]))
    fetched_at: dict[tuple[str, str], float] = {}
    purged: set[tuple[str, str]] = set()  # held once, then purged: the next fetch is the purge's doing
    by_tag: dict[str, set[tuple[str, str]]] = defaultdict(set)
    by_cache: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for _, _, event in events:
        if isinstance(event, Invalidation):
            for tag in event.tags:
                for entry in by_tag.pop(tag, ()):
                    held_since = fetched_at.get(entry)
                    # An entry already expired is fetched again for that reason, purge or not.
                    if held_since is not None and event.at < held_since + ttls.get(entry[1], math.inf):
                        del fetched_at[entry]
                        purged.add(entry)
            continue
        entry = (event.cache, event.key)
        ttl = ttls.get(event.key, math.inf)
        if ttl <= 0:
            reason = "uncacheable"
        elif entry in fetched_at:
            if event.at < fetched_at[entry] + ttl:
                continue
            reason = "expiry"
        else:
            reason = "purge" if entry in purged else "first"
            purged.discard(entry)
        by_cache[event.cache] += 1
        reasons[reason] += 1
        if ttl > 0:
            fetched_at[entry] = event.at if event.answered_at is None else event.answered_at
            for tag in tags_of(event.key):
                by_tag[tag].add(entry)
    return by_cache, reasons


def stale_after_acknowledged_purge(requests: Iterable[RequestRecord], changes: Iterable[Change]) -> list[RequestRecord]:
    """Product answers older than a version whose purge every edge had acknowledged before the request was sent."""
    acked: dict[int, list[tuple[float, int]]] = defaultdict(list)  # product -> (acknowledged at, version), by time
    for change in changes:
        if change.version is not None and change.ack is not None and change.ack.completed_at is not None:
            acked[change.product_id].append((change.ack.completed_at, change.version))
    newest: dict[int, tuple[list[float], list[int]]] = {}
    for product, entries in acked.items():
        entries.sort()
        newest[product] = ([at for at, _ in entries], list(itertools.accumulate((v for _, v in entries), max)))
    offending = []
    for record in requests:
        if record.version is None or record.status != 200:
            continue
        found = newest.get(product_id(record.url_key) or -1)
        if found is None:
            continue
        times, versions = found
        i = bisect.bisect_left(times, record.sent)  # acknowledged strictly before the request was sent
        if i and record.version < versions[i - 1]:
            offending.append(record)
    return offending


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of sorted `values` by linear interpolation; None when empty."""
    if not values:
        return None
    position = (len(values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def summary_ms(seconds: Iterable[float], quantiles: Sequence[int] = (50, 95, 99)) -> dict[str, Any]:
    """Count and percentiles in milliseconds, rounded to 0.01 ms."""
    values = sorted(s * 1000 for s in seconds)
    out: dict[str, Any] = {"count": len(values)}
    for q in quantiles:
        p = percentile(values, q)
        out[f"p{q}"] = None if p is None else round(p, 2)
    return out


def histogram(seconds: Iterable[float], bounds_ms: Sequence[float] = HISTOGRAM_BOUNDS_MS) -> dict[str, list]:
    """Counts between consecutive bounds (ms); values beyond either end go to the end bins."""
    counts = [0] * (len(bounds_ms) - 1)
    for s in seconds:
        i = bisect.bisect_right(bounds_ms, s * 1000) - 1
        counts[min(max(i, 0), len(counts) - 1)] += 1
    return {"bounds_ms": list(bounds_ms), "counts": counts}


def tally(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Requests by outcome, their sum, hits and hit ratio, and bytes delivered."""
    return _with_totals(Counter(r.outcome for r in records), sum(r.bytes for r in records))


def _with_totals(counts: Mapping[str, int], body_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"total": sum(counts.get(o, 0) for o in OUTCOMES)}
    out.update({o: counts.get(o, 0) for o in OUTCOMES})
    hits = out["hit"] + out["stale"]
    out["hits"] = hits
    out["hit_ratio"] = round(hits / (hits + out["miss"]), 4) if hits + out["miss"] else None
    out["bytes"] = body_bytes
    return out


def _ratio(part: float | None, whole: float | None) -> float | None:
    return None if part is None or not whole else round(part / whole, 4)


def origin_counts(samples: Sequence[OriginSample], changes: Sequence[Change]) -> tuple[int | None, int | None]:
    """Origin requests and bytes caused by CDN traffic over the run (product changes taken out); None if unknown."""
    if len(samples) < 2:
        return None, None
    first, last = samples[0], samples[-1]
    requests = (last.total - last.writes) - (first.total - first.writes)
    if requests < 0:  # someone reset the counters during the run
        return None, None
    body_bytes = last.bytes_sent - first.bytes_sent - sum(c.response_bytes for c in changes)
    return requests, max(body_bytes, 0)


def _origin_at(samples: Sequence[OriginSample], at: float) -> float | None:
    """CDN-caused origin requests counted by `at`, interpolated between polls."""
    if not samples or at < samples[0].at or at > samples[-1].at:
        return None
    times = [s.at for s in samples]
    i = bisect.bisect_left(times, at)
    a, b = samples[max(i - 1, 0)], samples[i]
    ya, yb = a.total - a.writes, b.total - b.writes
    return float(ya) if b.at == a.at else ya + (yb - ya) * (at - a.at) / (b.at - a.at)


def build_report(trace: Trace, modelled_origin_ms: Mapping[str, float]) -> dict[str, Any]:
    """Every figure of the report from one trace."""
    requests = trace.requests
    duration = max(trace.ended - trace.started, 1e-9)
    totals = tally(requests)

    def grouped(key: Callable[[RequestRecord], str | None]) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[RequestRecord]] = defaultdict(list)
        for r in requests:
            groups[key(r) or "unknown"].append(r)
        return {name: tally(rs) for name, rs in sorted(groups.items())}

    by_client = grouped(lambda r: r.client)
    clients = [{"address": c.address, "region": c.region, "kind": c.kind,
                "requests": by_client.get(c.address, {}).get("total", 0),
                "refused": by_client.get(c.address, {}).get("refused", 0),
                "hit_ratio": by_client.get(c.address, {}).get("hit_ratio")} for c in trace.clients]

    origin_requests, origin_bytes = origin_counts(trace.origin_samples, trace.changes)
    invalidations = []
    for change in trace.changes:
        if not 200 <= change.status < 300:
            continue
        if change.ack is not None:
            invalidations.append(Invalidation(change.ack.created_at, frozenset(change.ack.tags)))
        else:
            tags = frozenset(t.format(id=change.product_id) for t in trace.config.change_tags)
            invalidations.append(Invalidation(change.sent, tags))
    answered = [r for r in requests if r.outcome != "refused" and r.status != 0]
    # A cache keys on the URL as sent: a cache-busting query makes a new object even for an ideal
    # cache, so the ideal is computed on that key (`target`; TTLs are the object's, by `url_key`).
    ttls = {r.target: trace.ttls[r.url_key] for r in answered if r.target and r.url_key in trace.ttls}
    shared, shared_reasons = ideal_origin_fetches(
        (Lookup(r.sent, r.target or r.url_key, "shared", r.sent + r.latency) for r in answered),
        ttls or trace.ttls, invalidations)
    per_edge, per_edge_reasons = ideal_origin_fetches(
        (Lookup(r.sent, r.target or r.url_key, r.edge or "unknown", r.sent + r.latency) for r in answered),
        ttls or trace.ttls, invalidations)
    offload = 1 - origin_requests / totals["total"] if origin_requests is not None and totals["total"] else None
    best = 1 - sum(shared.values()) / totals["total"] if totals["total"] else None
    best_per_edge = 1 - sum(per_edge.values()) / totals["total"] if totals["total"] else None

    ordinary = [r for r in requests if not r.abusive and r.status != 0]
    by_region_latency: dict[str, list[float]] = defaultdict(list)
    by_outcome_latency: dict[str, list[float]] = defaultdict(list)
    for r in ordinary:
        by_region_latency[r.region].append(r.latency)
        by_outcome_latency[r.outcome].append(r.latency)

    acks = [c.ack for c in trace.changes if c.ack is not None]
    propagation = [at - a.created_at for a in acks for at in a.applied.values() if at is not None]
    complete = [a.completed_at - a.created_at for a in acks if a.completed_at is not None]
    offending = stale_after_acknowledged_purge(requests, trace.changes)
    refused = [r for r in requests if r.outcome == "refused"]

    timeline = []
    buckets: dict[int, Counter[str]] = defaultdict(Counter)
    for r in requests:
        buckets[max(int(r.sent - trace.started), 0)][r.outcome] += 1
    # Sends queued behind the concurrency bound may go out after the deadline (up to max_lag): the timeline runs on.
    seconds = max(math.ceil(trace.config.duration), max(buckets, default=0) + 1)
    for second in range(seconds):
        row = _with_totals(buckets.get(second, Counter()), 0)
        start, end = _origin_at(trace.origin_samples, trace.started + second), \
            _origin_at(trace.origin_samples, trace.started + second + 1)
        timeline.append({"t": second, "requests": row["total"], **{o: row[o] for o in OUTCOMES},
                         "hit_ratio": row["hit_ratio"],
                         "origin_requests": None if start is None or end is None else round(end - start, 1)})

    config = trace.config
    return {
        "schema": SCHEMA,
        "run": {"started_at": trace.started, "duration_s": config.duration, "wall_s": round(duration, 3),
                "front_door": trace.front_door,
                "origin": trace.origin, "purge_api": trace.purge_api, "config": asdict(config)},
        "requests": totals,
        "by_edge": grouped(lambda r: r.edge),
        "by_region": grouped(lambda r: r.region),
        "clients": clients,
        "origin": {"requests": origin_requests, "bytes": origin_bytes, "changes": len(trace.changes),
                   "offload_requests": None if offload is None else round(offload, 4),
                   "offload_bytes": None if origin_bytes is None or not totals["bytes"]
                   else round(1 - origin_bytes / totals["bytes"], 4)},
        "ideal": {
            "shared_cache": {"origin_fetches": sum(shared.values()), "offload": None if best is None else round(best, 4),
                             "forced_by": _reasons(shared_reasons)},
            "per_edge_cache": {"origin_fetches": sum(per_edge.values()),
                               "offload": None if best_per_edge is None else round(best_per_edge, 4),
                               "forced_by": _reasons(per_edge_reasons), "by_edge": dict(sorted(per_edge.items()))},
            "achieved_of_best": _ratio(offload, best),
            "achieved_of_best_per_edge": _ratio(offload, best_per_edge),
        },
        "latency": {
            "client_to_edge_ms": summary_ms(r.latency for r in ordinary),
            "by_region": {name: summary_ms(values) for name, values in sorted(by_region_latency.items())},
            "by_outcome": {name: summary_ms(values) for name, values in sorted(by_outcome_latency.items())},
            "histogram": histogram(r.latency for r in ordinary),
            "modelled_origin_ms": dict(modelled_origin_ms),
        },
        "purges": {"changes": len(trace.changes), "acknowledged": len(complete),
                   "incomplete": sum(1 for c in trace.changes if c.purge_id and (c.ack is None or not c.ack.complete)),
                   "propagation_ms": summary_ms(propagation, (50, 99)), "complete_ms": summary_ms(complete, (50, 99))},
        "stale": {"older_than_acknowledged_purge": len(offending),
                  "by_reason": dict(sorted(Counter(r.detail or "unknown" for r in requests if r.outcome == "stale").items())),
                  "examples": [{"sent": r.sent, "url": r.url_key, "version": r.version, "edge": r.edge}
                               for r in offending[:5]]},
        "shield": {"refused": len(refused),
                   "by_status": {str(s): n for s, n in sorted(Counter(r.status for r in refused).items())},
                   "by_client": dict(Counter(r.client for r in refused).most_common())},
        "timeline": timeline,
        "generator": {"target_rate": config.rate, "abusive_rate": sum(a.rate for a in config.abusive),
                      "achieved_rate": round(len(requests) / config.duration, 1), "late_sends": trace.late_sends,
                      "skipped": trace.skipped,
                      "max_lag_ms": round(trace.max_lag * 1000, 1)},
    }


def _reasons(counts: Counter[str]) -> dict[str, int]:
    return {reason: counts.get(reason, 0) for reason in ("first", "expiry", "purge", "uncacheable")}


# -- running it --------------------------------------------------------------------------------------


@dataclass
class _Client:
    info: ClientInfo
    pool: ConnectionPool
    headers: list[tuple[str, str]]
    rng: random.Random
    busting: bool = False


class Workload:
    """Drives simulated clients, product changes and stats polls for `config.duration`; one run per instance."""

    def __init__(self, config: WorkloadConfig, front_door: str, origin: str | None = None,
                 purge_api: str | None = None, purge_token: str | None = None,
                 progress: Callable[[Progress], None] | None = None) -> None:
        self.config = config
        self.front_door = front_door.rstrip("/")
        self.origin = origin.rstrip("/") if origin else None
        self.purge_api = purge_api.rstrip("/") if purge_api else None
        self.purge_token = purge_token
        self.progress = progress
        self.picker = RequestPicker(config)
        self.regions = Weighted(config.regions)
        self.trace = Trace(config, self.front_door, self.origin, self.purge_api, started=time.time())
        self._counts: Counter[str] = Counter()
        self._slots = asyncio.Semaphore(config.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._ack_tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> Trace:
        """Run the whole workload; returns once every request, change and acknowledgement poll has ended."""
        config = self.config
        clients, abusive = self._clients()
        self.trace.clients = [c.info for c in clients + abusive]
        origin_pool = ConnectionPool(self.origin, timeout=config.timeout) if self.origin else None
        purge_pool = (ConnectionPool(self.purge_api, max_connections=64, timeout=config.timeout + 10)
                      if self.purge_api and self.purge_token else None)
        ticker: asyncio.Task[None] | None = None
        try:
            if origin_pool:
                await self._sample_origin(origin_pool)
            loop = asyncio.get_running_loop()
            self.trace.started = time.time()
            start = loop.time()
            deadline = start + config.duration
            by_region: dict[str, list[_Client]] = defaultdict(list)
            for client in clients:
                by_region[client.info.region].append(client)
            pacers = [self._pace(config.rate, self._rng("ordinary"), start, deadline, partial(self._ordinary, by_region))]
            for i, (spec, client) in enumerate(zip(config.abusive, abusive)):
                pacers.append(self._pace(spec.rate, self._rng(f"abusive-{i}"), start, deadline,
                                         partial(self._abusive, client)))
            if origin_pool and config.change_rate > 0:
                pacers.append(self._pace(config.change_rate, self._rng("changes"), start, deadline,
                                         partial(self._changes, origin_pool, purge_pool)))
            ticker = asyncio.create_task(self._tick(origin_pool, start))
            await asyncio.gather(*pacers)
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=config.max_lag + config.timeout + 1)
            if self._ack_tasks:
                await asyncio.wait(self._ack_tasks, timeout=config.ack_timeout + config.timeout)
            self.trace.ended = time.time()
            ticker.cancel()
            ticker = None
            if origin_pool:
                await self._sample_origin(origin_pool)
            self._report_progress(loop.time() - start, origin_pool)
        finally:
            self.trace.skipped += len(self._tasks)  # still waiting for a slot or an answer: cancelled unrecorded
            for task in self._tasks | self._ack_tasks | ({ticker} if ticker else set()):
                task.cancel()
            for pool in [c.pool for c in clients + abusive] + [p for p in (origin_pool, purge_pool) if p]:
                await pool.aclose()
        return self.trace

    def _clients(self) -> tuple[list[_Client], list[_Client]]:
        config = self.config
        host = config.host or urlsplit(self.front_door).netloc
        ordinary, abusive = [], []
        address = itertools.count(config.first_address)
        for region in config.regions:
            for _ in range(config.clients_per_region):
                ordinary.append(self._client(f"127.0.0.{next(address)}", region, "ordinary", host))
        for i, spec in enumerate(config.abusive):
            kind = "cache-busting" if spec.cache_busting else "abusive"
            client = self._client(f"127.0.0.{config.first_abusive_address + i}", spec.region or next(iter(config.regions)),
                                  kind, host)
            client.busting = spec.cache_busting
            abusive.append(client)
        return ordinary, abusive

    def _client(self, address: str, region: str, kind: str, host: str) -> _Client:
        config = self.config
        pool = ConnectionPool(self.front_door, local_address=address, max_connections=config.connections_per_client,
                              timeout=config.timeout, host=host)
        headers = [("x-client-region", region), ("user-agent", f"cdn-workload ({kind})")]
        return _Client(ClientInfo(address, region, kind), pool, headers, self._rng(address))

    async def _pace(self, rate: float, rng: random.Random, start: float, deadline: float,
                    fire: Callable[[float, random.Random], None]) -> None:
        """Poisson arrivals at `rate` per second from `start` until `deadline` (open loop)."""
        loop = asyncio.get_running_loop()
        at = start
        while True:
            at += rng.expovariate(rate)
            if at >= deadline:
                return
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            fire(at, rng)

    def _rng(self, purpose: str) -> random.Random:
        return random.Random(f"{self.config.seed}-{purpose}")

    def _ordinary(self, by_region: Mapping[str, list[_Client]], at: float, rng: random.Random) -> None:
        in_region = by_region[self.regions.sample(rng)]
        self._spawn(self._request(in_region[rng.randrange(len(in_region))], at))

    def _abusive(self, client: _Client, at: float, rng: random.Random) -> None:
        self._spawn(self._request(client, at))

    def _changes(self, origin: ConnectionPool, purges: ConnectionPool | None, at: float, rng: random.Random) -> None:
        self._spawn(self._change(origin, purges, rng))

    def _spawn(self, coroutine: Any, into: set[asyncio.Task[None]] | None = None) -> None:
        tasks = self._tasks if into is None else into
        task = asyncio.create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _request(self, client: _Client, scheduled: float) -> None:
        kind, key = self.picker.pick(client.rng)
        target = bust(key, client.rng) if client.busting else key
        async with self._slots:
            lag = asyncio.get_running_loop().time() - scheduled
            if lag > self.config.max_lag:
                self.trace.skipped += 1
                return
            if lag > LATE_AFTER:
                self.trace.late_sends += 1
            self.trace.max_lag = max(self.trace.max_lag, lag)
            sent, started = time.time(), time.perf_counter()
            try:
                response = await client.pool.request("GET", target, client.headers)
            except RequestFailed as exc:
                self._record(RequestRecord(sent, time.perf_counter() - started, client.info.address, client.info.region,
                                           kind, key, 0, "error", None, exc.reason, 0, None, client.info.kind != "ordinary",
                                           target))
                return
            latency = time.perf_counter() - started
        cache_status = response.header("cache-status")
        outcome, cache_name, detail = classify(response.status, cache_status)
        edge = _first_token(response.header("x-served-by")) or cache_name or _first_token(response.header("x-routed-to"))
        version = response.header("x-content-version") if kind == "product" else None
        if response.status == 200 and key not in self.trace.ttls and response.header("cache-control") is not None:
            self.trace.ttls[key] = freshness_lifetime(response.header("cache-control"))
        self._record(RequestRecord(sent, latency, client.info.address, client.info.region, kind, key, response.status,
                                   outcome, edge, detail, len(response.body),
                                   int(version) if version and version.isdigit() else None,
                                   client.info.kind != "ordinary", target))

    def _record(self, record: RequestRecord) -> None:
        self.trace.requests.append(record)
        self._counts[record.outcome] += 1

    async def _change(self, origin: ConnectionPool, purge_pool: ConnectionPool | None, rng: random.Random) -> None:
        product = self.picker.products.sample(rng)
        body = json.dumps({"price": round(rng.uniform(1, 500), 2)}).encode()
        sent = time.time()
        try:
            response = await origin.request("PATCH", f"/api/products/{product}",
                                            [("content-type", "application/json")], body)
        except RequestFailed:
            self.trace.changes.append(Change(sent, product, 0, None, None))
            return
        version = response.header("x-content-version")
        change = Change(sent, product, response.status, int(version) if version and version.isdigit() else None,
                        response.header("x-purge-id"), len(response.body))
        self.trace.changes.append(change)
        if change.purge_id and purge_pool is not None:
            self._spawn(self._await_ack(purge_pool, change), self._ack_tasks)

    async def _await_ack(self, pool: ConnectionPool, change: Change) -> None:
        """Ask the purge API until every edge applied the change's purge, or `ack_timeout` passed."""
        headers = [("authorization", f"Bearer {self.purge_token}")]
        give_up = time.monotonic() + self.config.ack_timeout
        while time.monotonic() < give_up:
            wait = max(0.1, min(5.0, give_up - time.monotonic()))
            try:
                response = await pool.request("GET", f"/purges/{change.purge_id}?wait={wait:.1f}", headers)
                answer = json.loads(response.body) if response.status == 200 else None
            except (RequestFailed, ValueError):
                answer = None
            else:
                if response.status in (401, 403, 404):  # a wrong token or an unknown purge: asking again cannot help
                    return
            if isinstance(answer, dict):
                change.ack = PurgeAck(
                    str(answer.get("id", change.purge_id)), float(answer.get("created_at") or change.sent),
                    bool(answer.get("complete")),
                    {edge: (float(a["at"]) if a.get("at") is not None else None)
                     for edge, a in (answer.get("applied") or {}).items()},
                    tuple(answer.get("values") or ()) if answer.get("kind") == "tag" else ())
                if change.ack.complete:
                    return
            else:
                await asyncio.sleep(0.2)

    async def _sample_origin(self, pool: ConnectionPool) -> None:
        try:
            response = await pool.request("GET", "/_origin/stats")
            stats = json.loads(response.body)
        except (RequestFailed, ValueError):
            return
        if response.status != 200 or not isinstance(stats, dict):
            return
        methods = stats.get("by_method") or {}
        self.trace.origin_samples.append(OriginSample(time.time(), int(stats.get("total", 0)),
                                                      int(methods.get("PATCH", 0)) + int(methods.get("PUT", 0)),
                                                      int(stats.get("bytes_sent", 0))))

    async def _tick(self, origin: ConnectionPool | None, start: float) -> None:
        """Poll the origin's counters and report progress once a second."""
        loop = asyncio.get_running_loop()
        second = 1
        while True:
            await asyncio.sleep(max(0.0, start + second - loop.time()))
            if origin:
                await self._sample_origin(origin)
            self._report_progress(loop.time() - start, origin)
            second += 1

    def _report_progress(self, elapsed: float, origin: ConnectionPool | None) -> None:
        if self.progress is None:
            return
        counts = self._counts
        hits = counts["hit"] + counts["stale"]
        samples = self.trace.origin_samples
        origin_rps = None
        if origin and len(samples) >= 2 and samples[-1].at > samples[-2].at:
            a, b = samples[-2], samples[-1]
            origin_rps = round(((b.total - b.writes) - (a.total - a.writes)) / (b.at - a.at), 1)
        self.progress(Progress(round(elapsed, 1), sum(counts[o] for o in OUTCOMES),
                               round(hits / (hits + counts["miss"]), 4) if hits + counts["miss"] else None,
                               origin_rps, counts["refused"], counts["error"], len(self.trace.changes)))


def _first_token(value: str | None) -> str | None:
    return (value.split(";", 1)[0].strip() or None) if value else None


async def run_workload(config: WorkloadConfig, front_door: str, origin: str | None = None,
                       purge_api: str | None = None, purge_token: str | None = None,
                       progress: Callable[[Progress], None] | None = None) -> Trace:
    """Run one workload and return its trace."""
    return await Workload(config, front_door, origin, purge_api, purge_token, progress).run()
