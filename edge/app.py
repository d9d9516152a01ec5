"""The edge's request path, read top to bottom like Varnish's built-in VCL.

    receive -> key -> lookup -+- fresh hit ------------------------------> deliver
                              +- stale, may serve (max-stale, swr) -------> deliver (+ background refresh)
                              +- must validate -> conditional fetch -> 304: freshen, deliver / else: store, deliver
                              +- miss -> fetch -> store? -> deliver (streamed while stored)
                              +- pass (other methods) -> fetch -> invalidate on success -> deliver

Hits are answered by plain ASGI code with header lists prepared when the entry
was stored; policy decisions come from `edge.policy`, bytes from `edge.store`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools

from cdn.access_log import access_logger
from cdn.asgi import run_lifespan
from cdn.http_server import CHECKED_FIELDS, BodyFile, fields_checked
from edge import policy as rfc
from edge.headers import (
    NO_TAGS,
    Directives,
    Headers,
    format_http_date,
    normalise_selecting_value,
    parse_range,
    parse_vary,
    split_list,
    surrogate_keys,
)
from edge.metrics import EdgeMetrics, TimedAcks
from edge.origin import BODY_ERRORS, OriginError, OriginResponse
from edge.purge_listener import PurgeListener
from edge.settings import EdgeSettings
from edge.shield import Decision, Shield
from edge.store import VARIANT, Entry, Store, stored_fields_size, variant_key
from edge.upstream import Upstream
from edge.uri import normalise_path
from purge_api.log import EdgeInfo, PurgeLog, open_log

log = logging.getLogger("cdn.edge")

# A child edge tells its parent which purge log position it has applied (see `Edge.shield_caught_up`).
PURGE_POSITION = "x-cdn-purge-position"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Client fields the edge answers itself, so they are not sent on when it fetches to store.
CLIENT_CONDITIONALS = frozenset({"if-none-match", "if-modified-since", "if-range", "range"})
# Client fields that are the edge's own business, never forwarded; and fields that could make an
# origin shape a response the cache key does not reflect (cache poisoning): the edge sets the
# X-Forwarded-* fields itself, and the override/rewrite fields have no place in a shared cache.
NOT_FORWARDED = rfc.HOP_BY_HOP | {
    "host", "content-length", "surrogate-capability", "cdn-loop", PURGE_POSITION,
    "x-forwarded-host", "x-forwarded-proto", "x-forwarded-scheme", "x-forwarded-port", "x-forwarded-server",
    "forwarded", "x-host", "x-original-url", "x-rewrite-url", "x-original-host",
    "x-http-method-override", "x-http-method", "x-method-override",
}
# Seconds the current request spent waiting for upstream response headers, for its access log line
# (each ASGI request runs in its own task, so this is per request).
UPSTREAM_WAIT: ContextVar[float | None] = ContextVar("upstream_wait", default=None)
compact_json = json.JSONEncoder(separators=(",", ":")).encode  # built once: json.dumps would build one per line


# Methods the edge answers 405 without asking the origin: it is no tunnel (RFC 9110 §9.3.6), and a TRACE
# would echo the fields it adds, or a client's credentials, back through a shared cache (§9.3.8).
NOT_FORWARDED_METHODS = frozenset({"CONNECT", "TRACE"})
ALLOWED_METHODS = (b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")


# Request fields that can change what a stored response answers (directives, conditionals, ranges, and
# the fields edges send each other): a request with any of them takes the full path.
HIT_SENSITIVE = frozenset({b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"if-range",
                           b"range", b"cdn-loop", b"surrogate-capability", PURGE_POSITION.encode()})


UNKEPT = frozenset({"content-length", "age"})  # stored fields an entry does not keep
HIT_KEYS = 4096  # (Host, target) -> cache key, remembered for the fast hit path
HIT_KEY_BYTES = 1024  # the longest Host and target together remembered (4,096 of them: a few MiB at most)
AGE_CAP = 2**31  # the largest Age sent (RFC 9111 §1.2.2)
COOKED = 1024  # entries whose delivery fields the fast hit path keeps read as pairs (the last ones hit)
FILES = 256  # the most files held at once (each a file descriptor)
FILES_CHECKED_EVERY = 1.0  # seconds between looks for files of bodies no longer stored (`share_files`)


class BadRequest(Exception):
    """A request the edge refuses with 400 before any other work."""


def valid_host(value: str, settings: EdgeSettings) -> str:
    """The request's Host, lower-cased, or BadRequest when it is missing, malformed or not served here."""
    host = value.strip().lower()
    if not host or any(c in host for c in " /\\@\0"):
        raise BadRequest("missing or invalid Host header")
    if settings.allowed_hosts and host.split(":")[0] not in settings.allowed_hosts:
        raise BadRequest(f"host {host!r} is not served here")
    return host


def request_target(scope: Scope) -> tuple[str, str]:
    """Path and query as keyed and forwarded (the path in RFC 3986 normal form), and the decoded path."""
    path = scope.get("raw_path") or scope["path"].encode("latin-1")
    target = path.decode("latin-1")
    if not target.startswith("/"):
        raise BadRequest("request target must be a path")
    decoded = scope["path"]
    normal = normalise_path(target)  # keyed and forwarded in normal form: the origin serves /b for /a/../b
    if normal is not target:
        target, decoded = normal, unquote(normal)
    query = scope.get("query_string", b"")
    if query:
        target += "?" + query.decode("latin-1")
    if "\0" in target:
        raise BadRequest("request target holds a NUL")  # none reaches a cache key (see edge.store.VARIANT)
    return target, decoded


@dataclass(slots=True)
class ClientRequest:
    method: str
    target: str  # path and query, as received
    host: str
    url: str  # cache key shared by every variant: host + target
    headers: Headers
    client: str
    directives: Directives = field(default=rfc.Directives({}))
    path: str = "/"  # decoded, without the query: what shield rules match
    client_ip: str | None = None  # the client as the shield counts it (trusted X-Forwarded-For, or the peer)
    loop_ids: frozenset[str] = frozenset()  # CDN-Loop (RFC 8586) entries this request already passed
    surrogate: bool = False  # sent by a surrogate (a child edge): it gets the targeted and tag fields too

    @classmethod
    def from_scope(cls, scope: Scope, settings: EdgeSettings, client_ip: str | None = None) -> ClientRequest:
        # Hop-by-hop fields (and those Connection names) are not the request's: they neither reach
        # the origin nor select a Vary variant (RFC 9110 §7.6.1).
        headers = rfc.end_to_end(Headers.from_raw(scope["headers"]))
        hosts = headers.get_all("host")
        if len(hosts) > 1:
            raise BadRequest("more than one Host header")
        host = valid_host(hosts[0] if hosts else "", settings)
        target, decoded = request_target(scope)
        client = scope.get("client") or ("", 0)
        return cls(
            method=scope["method"],
            target=target,
            host=host,
            url=host + target,
            headers=headers,
            client=client[0],
            directives=rfc.request_directives(headers),
            path=decoded,
            client_ip=client_ip,
            loop_ids=frozenset(m.split(";")[0].strip() for m in split_list(headers.get_all("cdn-loop"))),
            surrogate="surrogate-capability" in headers,
        )


@dataclass(slots=True, eq=False, kw_only=True)
class Stored(Entry, rfc.FreshnessRules):
    """A stored response as the request path keeps it: the store's Entry (key, body), with the
    response's freshness, status and fields in the same object. What its Vary selects is in its key.

    The stored fields are held once, in one bytes object (`field_block`): first the ones a hit sends
    (`wire` reads them as pairs), then the few it does not (targeted and tag fields). `headers` reads
    them all as text for the rest of the request path, and `tags` its surrogate keys: kept nowhere
    else, they cost no tuple of their own (the store's tag index holds each tag's string once).
    """

    status: int
    fields: bytes  # a `field_block`: no Age or Content-Length

    def fields_size(self) -> int:
        return stored_fields_size(self.fields)

    @property
    def wire(self) -> list[tuple[bytes, bytes]]:
        """The fields a hit sends, as (name, value) pairs, read on each call."""
        return delivered_and_held(self.fields)[0]

    @property
    def headers(self) -> Headers:
        """The stored response's end-to-end fields (but Age and Content-Length), built on each call."""
        return Headers.from_stored(*delivered_and_held(self.fields))

    @property
    def vary(self) -> tuple[tuple[str, str | None], ...]:
        """Each field its Vary names -> the normalised value it was stored for (None: absent), from its key."""
        parts = self.key.split(VARIANT)[1:]
        return tuple((name, value if eq else None) for name, eq, value in (p.partition("=") for p in parts))

    @property
    def tags(self) -> frozenset[str]:
        """Its surrogate keys (`Surrogate-Key`, `Cache-Tag`), read from its fields on each call."""
        if b"surrogate-key\0" not in self.fields and b"cache-tag\0" not in self.fields:
            return NO_TAGS  # no such field: the fields are not read (a name ending so is, and yields none)
        headers = self.headers
        return surrogate_keys(headers.get_all("surrogate-key"), headers.get_all("cache-tag"))


# Between the fields a hit sends and those it does not, in a `field_block`: no field has an empty name.
HELD = (b"", b"")


def field_block(delivered: list[tuple[bytes, bytes]], held: list[tuple[bytes, bytes]]) -> bytes:
    """`Stored.fields`: b"name\0value\0name\0value", the fields a hit sends, then (after HELD) those it does
    not. Their names and values hold no NUL (HTTP's parsers refuse one)."""
    fields = [*delivered, HELD, *held] if held else delivered
    return b"\0".join([part for field in fields for part in field])


def field_pairs(block: bytes) -> list[tuple[bytes, bytes]]:
    """The (name, value) pairs of a `field_block`, HELD among them if it holds fields a hit does not send."""
    if not block:
        return []
    parts = iter(block.split(b"\0"))
    return list(zip(parts, parts))


def delivered_and_held(block: bytes) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """The fields of a `field_block` a hit sends, and those it does not."""
    pairs = field_pairs(block)
    try:
        cut = pairs.index(HELD)
    except ValueError:
        return pairs, []
    return pairs[:cut], pairs[cut + 1:]


class Cooked:
    """An entry's delivery fields read once for the fast hit path (`Edge.cook`): as pairs with its Content-Length,
    and, when they and the fields a hit adds passed `fields_checked`, as the lines of a response head, with
    the lines a hit adds (Age, Cache-Status, X-Served-By) for the age and time to live they were made for;
    then a body of `sendfile_from` bytes or more may be held in a file too, which the server sends with sendfile."""

    __slots__ = ("source", "length", "fields", "lines", "age", "ttl", "head", "file")

    def __init__(self, entry: Stored, fields: list[tuple[bytes, bytes]], lines: bytes | None) -> None:
        # What they were read from, all they depend on: a purged and refetched entry has other `fields`
        # (or, when neither has fields, perhaps another length). Not the entry: that would keep its body.
        self.source = entry.fields
        self.length = len(entry.body)
        self.fields = fields
        self.lines = lines
        self.age = self.ttl = -1
        self.head = b""  # `lines` and the lines a hit adds, for `age` and `ttl`
        self.file: BodyFile | None = None  # a large body in a file, while `Edge.file_budget` allows


def _plain(status: int, message: str, extra: list[tuple[bytes, bytes]] = ()) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = (message.rstrip("\n") + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *extra]
    return headers, body


class Edge:
    """The edge node as an ASGI application."""

    def __init__(self, settings: EdgeSettings, purge_log: PurgeLog | None = None) -> None:
        self.settings = settings
        self.id = settings.id
        self.policy = rfc.CachePolicy(
            device=settings.id,
            heuristic_fraction=settings.heuristic_fraction,
            heuristic_max=settings.heuristic_max,
            cache_set_cookie=settings.cache_set_cookie,
        )
        self.store = Store(settings.cache_size, settings.max_object_size)
        self.shield = Shield(settings.shield, redis=settings.redis, prefix=settings.redis_prefix)
        self.upstream: Upstream | None = None
        self.purge_log = purge_log
        self.listener: PurgeListener | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._snapshots: asyncio.Task[None] | None = None
        self.refreshing: dict[str, asyncio.Task[None]] = {}
        self.flights: dict[str, asyncio.Event] = {}  # cache key -> set when its fetch is done (coalescing)
        self.hit_for_miss: dict[str, float] = {}  # cache key -> until when it skips coalescing
        self.in_flight = 0
        self.counters: dict[str, int] = {}
        self._via = f"1.1 {settings.id}"
        self._served_by = (b"x-served-by", f"{settings.id}; region={settings.region}".encode())
        self._served_by_line = b"%s: %s\r\n" % self._served_by
        self._status_id = self.id.encode()  # the first member of our Cache-Status entries
        self._hit_status = self._status_id + b"; hit; ttl="
        self._own_fields_checked = fields_checked([self._served_by, (b"cache-status", self._hit_status + b"1")])
        self._hit_keys: dict[tuple[bytes, bytes], str] = {}  # (Host, target) -> `hit_key`
        self._cooked: dict[str, Cooked] = {}  # key -> cook(key, entry)
        self.file_bytes = 0  # bytes of the bodies `_cooked` holds in files (`BodyFile`), at most:
        self.file_budget = min(settings.sendfile_bytes, settings.cache_size // 16)
        self.file_from = settings.sendfile_from  # the smallest body held in a file
        self.files = 0  # how many (at most FILES)
        # An upstream edge's X-Served-By is replaced by ours; targeted and tag fields are for caches only.
        self._strip = {"x-served-by", *(rfc.TARGETED_FIELDS + rfc.TAG_FIELDS if settings.strip_surrogate_headers else ())}
        self.metrics = EdgeMetrics(self)
        self.access_log = access_logger() if settings.access_log else None
        from edge.admin import build_admin

        self.admin = build_admin(self)

    # -- ASGI -----------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"].startswith("/_edge/"):
                await self.admin(scope, receive, send)
            elif self.access_log is None:
                await self.handle(scope, receive, send)
            else:
                await self.handle_logged(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        await run_lifespan(receive, send, self.start, self.stop)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()  # the loop serving this edge (tests drive it from threads)
        if self.upstream is None:
            self.upstream = Upstream(self.settings)
            await self.upstream.start()
            self._sweeper = asyncio.create_task(self.sweep_forever())
        if self.listener is None and (self.purge_log is not None or self.settings.redis):
            if self.purge_log is None:
                self.purge_log = open_log(self.settings.redis, prefix=self.settings.redis_prefix)
            s = self.settings
            info = EdgeInfo(id=s.id, region=s.region, address=s.advertise_url or f"http://{s.host}:{s.port}",
                            latitude=s.latitude, longitude=s.longitude)
            acks_timed = TimedAcks(self.purge_log, self.metrics.purge_lag)
            self.listener = PurgeListener(acks_timed, self.store, info, s.heartbeat_interval,
                                          stats=self.registry_stats, count=self.count, fence_ttl=s.fence_ttl)
            self.listener.start()
        if self.metrics.snapshots is not None and self._snapshots is None:
            self._snapshots = asyncio.create_task(self.metrics.snapshots.leave_forever(self.metrics.render_own))
        self.metrics.gc_pauses.watch()

    async def sweep_forever(self) -> None:
        """Delete what tag purges removed, a few hundred entries at a time, between requests; now and then
        share the files for large bodies anew (`share_files`)."""
        shared = time.monotonic()
        while True:
            if time.monotonic() - shared >= FILES_CHECKED_EVERY:
                self.share_files()
                shared = time.monotonic()
            await asyncio.sleep(0 if self.store.sweep(250) else 0.05)

    async def stop(self) -> None:
        self.metrics.gc_pauses.stop()
        for task in [*self.refreshing.values(), *(t for t in (self._sweeper, self._snapshots) if t is not None)]:
            task.cancel()
        self._sweeper = self._snapshots = None
        if self.metrics.snapshots is not None:
            self.metrics.snapshots.remove()
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
            if self.settings.redis and self.purge_log is not None:
                await self.purge_log.close()
                self.purge_log = None
        if self.upstream is not None:
            await self.upstream.stop()
            self.upstream = None
        await self.shield.close()

    def registry_stats(self) -> dict[str, Any]:
        """What the edge tells the registry about itself with each heartbeat."""
        c = self.counters
        return {"hits": c.get("hit", 0) + c.get("stale_max_stale", 0) + c.get("stale_while_revalidate", 0),
                "misses": c.get("miss", 0),
                "revalidations": c.get("revalidate", 0), "passes": c.get("pass", 0),
                "objects": len(self.store), "bytes": self.store.size}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    async def handle_logged(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`handle`, then one access log line: what was sent (status, Cache-Status, body bytes) and how long it took."""
        assert self.access_log is not None
        started = time.perf_counter()
        status: int | None = None
        cache_status: str | None = None
        sent = 0

        async def watched(message: MutableMapping[str, Any]) -> None:
            nonlocal status, cache_status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message["headers"]:
                    if name == b"cache-status":
                        cache_status = value.decode("latin-1")  # ours is the last one (RFC 9211 §2)
            else:
                sent += len(message.get("body", b""))
            await send(message)

        token = UPSTREAM_WAIT.set(None)
        try:
            await self.handle(scope, receive, watched)
        finally:
            upstream = UPSTREAM_WAIT.get()
            UPSTREAM_WAIT.reset(token)
            self.log_access(scope, status, cache_status.partition("; ")[2] if cache_status else None, sent, started,
                            upstream)

    def log_access(self, scope: Scope, status: int | None, cache: str | None, sent: int, started: float,
                   upstream: float | None = None) -> None:
        """The access log line of a request: what was sent (status, Cache-Status, body bytes) and how long it took."""
        assert self.access_log is not None
        target = scope.get("raw_path") or scope["path"].encode("latin-1")
        if query := scope.get("query_string"):
            target += b"?" + query
        host = next((value for name, value in scope["headers"] if name == b"host"), b"")
        self.access_log.info(compact_json({
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "edge": self.id,
            "region": self.settings.region,
            "client": self.shield.client_ip(scope),
            "method": scope["method"],
            "host": host.decode("latin-1"),
            "target": target.decode("latin-1"),
            "status": status,
            "cache": cache,
            "bytes": sent,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "origin_ms": None if upstream is None else round(upstream * 1000, 3),
        }))

    # -- receive --------------------------------------------------------------
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The shield first: oversized, banned and over-limit requests cost nothing more.
        problem = self.shield.check_size(scope)
        if problem is not None:
            await self.send_error(send, *problem)
            return
        shield = self.shield
        if shield.admits_all_on_receive():
            client_ip = None  # worked out below, when the request goes past the fast hit path
        else:
            client_ip = shield.client_ip(scope)
            decision = await shield.admit(client_ip, scope["method"], scope["path"], scope["headers"])
            if not decision.allowed:
                await self.refuse(send, decision)
                return
        if scope["method"] in NOT_FORWARDED_METHODS:
            self.count("method_not_allowed")
            await self.send_error(send, 405, f"{scope['method']} is not served here", extra=[ALLOWED_METHODS])
            return
        if scope["method"] in ("GET", "HEAD") and await self.fresh_hit(scope, send):
            return
        if client_ip is None:
            client_ip = shield.client_ip(scope)
        try:
            request = ClientRequest.from_scope(scope, self.settings, client_ip)
        except BadRequest as exc:
            self.count("bad_request")
            await self.send_error(send, 400, f"bad request: {exc}")
            return
        if self.upstream is None:
            await self.start()
        if self.id in request.loop_ids:
            self.count("loop_detected")
            await self.send_error(send, 508, f"loop detected: this request already passed {self.id} (CDN-Loop)")
            return
        self.in_flight += 1
        try:
            if request.method in ("GET", "HEAD"):
                await self.lookup(request, send)
            else:
                await self.pass_(request, receive, send)
        finally:
            self.in_flight -= 1

    async def fresh_hit(self, scope: Scope, send: Send) -> bool:
        """Send the fresh hit `fresh` finds, counted as a hit. False: the full path decides."""
        host = self.hit_host(scope["headers"])
        if host is None:
            return False
        path = scope.get("raw_path")
        if path is None:
            return False  # a server that gives no raw_path: the path it gives is decoded, no target to key
        query = scope.get("query_string")
        key = self.hit_key(host, path + b"?" + query if query else path)
        found = self.fresh(key) if key else None
        if found is None:
            return False
        entry, cooked, age, ttl = found
        body = self.served(entry, scope["method"] == "GET")
        headers = [*cooked.fields, (b"age", b"%d" % (age if age < AGE_CAP else AGE_CAP)),
                   (b"cache-status", self._hit_status + b"%d" % ttl), self._served_by]
        start = {"type": "http.response.start", "status": entry.status, "headers": headers}
        if cooked.lines is not None:
            start[CHECKED_FIELDS] = len(body)  # our server writes them without checking each again
        await send(start)
        await send({"type": "http.response.body", "body": body})
        return True

    def answer_now(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                   scope: Callable[[], Scope]) -> tuple[int, bytes, bytes | BodyFile] | None:
        """For a server that answers while it parses (`cdn.http_server`): the fresh hit `handle` would send
        for this request, as (status, its field lines, body or the body's file), when the entry's fields
        passed `fields_checked`; counted and logged as a hit. None: the server runs the app as usual."""
        started = 0.0 if self.access_log is None else time.perf_counter()
        if (method != b"GET" and method != b"HEAD") or not self.shield.admits_all_on_receive():
            return None
        host = self.hit_host(headers)
        if host is None:
            return None
        key = self._hit_keys.get((host, target))  # `hit_key`, its first step inline
        if key is None:
            key = self.new_hit_key(host, target)
        found = self.fresh(key) if key else None
        if found is None:
            return None
        entry, cooked, age, ttl = found
        if cooked.lines is None:
            return None
        age, ttl = int(age if age < AGE_CAP else AGE_CAP), int(ttl)
        if cooked.age != age or cooked.ttl != ttl:  # the lines a hit adds change once a second at most
            cooked.age, cooked.ttl = age, ttl
            cooked.head = cooked.lines + b"age: %d\r\ncache-status: %s%d\r\n%s" % (
                age, self._hit_status, ttl, self._served_by_line)
        body = self.served(entry, method == b"GET")
        counters = self.counters  # which hits took the quickest way (operators see a setting that stops it)
        counters["hit_while_parsing"] = counters.get("hit_while_parsing", 0) + 1
        if self.access_log is not None:
            self.log_access(scope(), entry.status, f"hit; ttl={ttl}", len(body), started)
        return entry.status, cooked.head, cooked.file if cooked.file is not None and body else body

    def hit_host(self, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """The Host of a request the fast hit path may answer: one Host, no field that could change the
        answer (HIT_SENSITIVE), and fields within the shield's size limits. None: the full path decides."""
        host = None
        size = 0
        for name, value in headers:
            size += len(name) + len(value)
            if name == b"host":
                if host is not None:
                    return None
                host = value
            elif name in HIT_SENSITIVE:
                return None
        sizes = self.shield.sizes
        if size > sizes.max_bytes or len(headers) > sizes.max_count:
            return None
        return host

    def fresh(self, key: str) -> tuple[Stored, Cooked, float, float] | None:
        """The commonest answer, found without building the request: a fresh entry stored under `key` without
        Vary, as (the entry, its `cook`, its age, its time to live). None: the full path decides."""
        entry = self.store.only_variant(key)
        if entry is None:
            return None
        age = time.time() - entry.response_time  # entry.age(now) inline, with conditionals: calling max() costs more
        age = entry.initial_age + (age if age > 0.0 else 0.0)
        ttl = entry.lifetime - age
        # rfc.reuse for a request without directives: FRESH exactly when this holds.
        if ttl <= 0 or entry.rules.no_cache or entry.soft_purged:  # stored under its URL: no Vary
            return None
        cooked = self._cooked.get(key)
        if (cooked is None or cooked.source is not entry.fields or cooked.length != len(entry.body)
                or (cooked.file is not None and cooked.file.data is not entry.body)):
            cooked = self.cook(key, entry)
        return entry, cooked, age, ttl

    def served(self, entry: Stored, get: bool) -> bytes:
        """The body a fresh hit sends (a GET's; none for HEAD); the entry is touched and the hit counted."""
        self.store.touch(entry)
        counters = self.counters
        counters["hit"] = counters.get("hit", 0) + 1
        if not get:
            return b""
        body = entry.body
        counters["served_bytes_cache"] = counters.get("served_bytes_cache", 0) + len(body)
        return body

    def cook(self, key: str, entry: Stored) -> Cooked:
        """`Cooked` for an entry, kept for the last COOKED entries served, so a hot entry is not read per hit."""
        wire = entry.wire
        fields = [*wire, (b"content-length", b"%d" % len(entry.body))]
        checked = self._own_fields_checked and fields_checked(wire)
        cooked = Cooked(entry, fields, b"".join(b"%s: %s\r\n" % field for field in fields) if checked else None)
        self.uncook(key)
        if len(self._cooked) >= COOKED:
            self.uncook(next(iter(self._cooked)))  # the longest kept
        self.give_file(cooked, entry.body)
        self._cooked[key] = cooked
        return cooked

    def give_file(self, cooked: Cooked, body: bytes) -> None:
        """Hold a large `body` in a file for `cooked` (whose lines the server writes), while the budget allows."""
        size = len(body)
        if (cooked.lines is None or size < self.file_from or self.file_bytes + size > self.file_budget
                or self.files >= FILES):
            return
        try:
            cooked.file = BodyFile(body)
        except OSError as exc:  # no memfd here, or out of file descriptors: sent from memory
            if not self.counters.get("body_file_failed"):
                log.warning("no file for a body of %d bytes (%s): large bodies are sent from memory", size, exc)
            self.count("body_file_failed")
        else:
            self.file_bytes += size
            self.files += 1

    def uncook(self, key: str) -> None:
        """Forget `cook`'s record for `key`, closing its file."""
        cooked = self._cooked.pop(key, None)
        if cooked is not None and cooked.file is not None:
            self.file_bytes -= len(cooked.file)
            self.files -= 1
            cooked.file.close()

    def share_files(self) -> None:
        """Close the files of bodies no longer stored under their key (purged, evicted, replaced), and give
        the budget that frees to the large bodies served last that have none; every FILES_CHECKED_EVERY s."""
        stored = self.store.peek
        for key in [key for key, cooked in self._cooked.items()
                    if cooked.file is not None and getattr(stored(key), "body", None) is not cooked.file.data]:
            self.uncook(key)
        for key, cooked in reversed(self._cooked.items()):
            if self.files >= FILES or self.file_bytes + self.file_from > self.file_budget:
                break
            entry = stored(key)
            if cooked.file is None and entry is not None and cooked.source is entry.fields:
                self.give_file(cooked, entry.body)

    def hit_key(self, host: bytes, target: bytes) -> str:
        """The cache key of a fast-path request for `target` (as it came) at `host`, remembered for the hosts
        and targets seen last; "" when the fast path leaves it to the full path (which refuses it, or serves
        it from /_edge/, or finds its target too long)."""
        key = self._hit_keys.get((host, target))
        return self.new_hit_key(host, target) if key is None else key

    def new_hit_key(self, host: bytes, target: bytes) -> str:
        """`hit_key` for a Host and target it does not remember: what the full path keys the request by, read
        as uvicorn reads it; remembered unless long."""
        key = self.target_key(host, target)
        if len(host) + len(target) <= HIT_KEY_BYTES:
            if len(self._hit_keys) >= HIT_KEYS:
                self._hit_keys.clear()  # a flood of distinct targets costs at most one rebuild per HIT_KEYS
            self._hit_keys[host, target] = key
        return key

    def target_key(self, host: bytes, target: bytes) -> str:
        """`new_hit_key`'s key, or "" for a target the full path must see."""
        if len(target) > self.shield.sizes.max_target:
            return ""
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            return ""
        # No path (an absolute form such as http://host, refused), or one uvicorn cannot read (its 400).
        if url.path is None or not url.path.isascii():
            return ""
        path = url.path.decode("ascii")
        decoded = unquote(path) if "%" in path else path
        if decoded.startswith("/_edge/"):
            return ""
        try:
            return valid_host(host.decode("latin-1"), self.settings) + request_target(
                {"path": decoded, "raw_path": url.path, "query_string": url.query or b""})[0]
        except BadRequest:
            return ""

    async def shield_caught_up(self, request: ClientRequest) -> bool:
        """As a parent: have we applied every purge the child asking us has? Wait a little if not."""
        wanted = request.headers.get(PURGE_POSITION)
        if wanted is None or self.listener is None:
            return True
        return await self.listener.wait_until_applied(wanted, timeout=1.0)

    # -- lookup ---------------------------------------------------------------
    def select(self, request: ClientRequest) -> tuple[Stored | None, bool]:
        """The stored variant this request selects (RFC 9111 §4.1), and whether any variant exists."""
        variants = self.store.variants(request.url)
        best: Stored | None = None
        for entry in variants:
            if all(normalise_selecting_value(name, request.headers.get_all(name)) == value for name, value in entry.vary):
                if best is None or entry.response_time > best.response_time:
                    best = entry
        if best is not None:
            self.store.touch(best)
        return best, bool(variants)

    async def lookup(self, request: ClientRequest, send: Send) -> None:
        if not await self.shield_caught_up(request):
            # We have not applied a purge our child has: our copy may be what it purged.
            self.count("shield_bypass")
            await self.fetch(request, send, None, "bypass")
            return
        entry, had_variants = self.select(request)
        only_if_cached = "only-if-cached" in request.directives
        if entry is None:
            if only_if_cached:
                self.count("only_if_cached_miss")
                await self.send_error(send, 504, "not in cache (only-if-cached)", "fwd=miss")
                return
            await self.fetch(request, send, None, "vary-miss" if had_variants else "miss")
            return
        now = time.time()
        decision = rfc.reuse(entry, request.directives, now, entry.soft_purged)
        if decision is rfc.Reuse.FRESH:
            self.count("hit")
            await self.deliver(request, entry, send, "hit", now)
        elif decision is rfc.Reuse.STALE_ALLOWED:
            self.count("stale_max_stale")
            await self.deliver(request, entry, send, "hit", now, detail="max-stale")
        elif decision is rfc.Reuse.STALE_WHILE_REVALIDATE:
            self.count("stale_while_revalidate")
            self.refresh_in_background(request, entry)
            await self.deliver(request, entry, send, "hit", now, detail="stale-while-revalidate")
        elif only_if_cached:
            self.count("only_if_cached_miss")
            await self.send_error(send, 504, "stored response is stale (only-if-cached)", "fwd=stale")
        else:
            await self.fetch(request, send, entry, "stale" if not ("no-cache" in request.directives) else "request")

    # -- fetch ----------------------------------------------------------------
    def forward_headers(self, request: ClientRequest, stale: Stored | None, to_store: bool) -> list[tuple[str, str]]:
        """The request fields sent to the origin: end-to-end only, plus the proxy's own (RFC 9110 §7.6)."""
        drop = NOT_FORWARDED | rfc.connection_listed(request.headers)
        if to_store and stale is not None:
            drop = drop | CLIENT_CONDITIONALS
        out = [(k, v) for k, v in request.headers.items if k not in drop and k not in ("via", "x-forwarded-for")]
        via = ", ".join(request.headers.get_all("via") + [self._via])
        forwarded_for = ", ".join(request.headers.get_all("x-forwarded-for") + [request.client])
        loop = ", ".join(request.headers.get_all("cdn-loop") + [self.id])
        out += [("via", via), ("x-forwarded-for", forwarded_for), ("x-forwarded-host", request.host),
                ("x-forwarded-proto", "http"), ("surrogate-capability", f'{self.id}="Surrogate/1.0"'),
                ("cdn-loop", loop)]
        if stale is not None and to_store:
            out += rfc.validators(stale.headers)
        return out

    async def fetch(self, request: ClientRequest, send: Send, stale: Stored | None, reason: str) -> None:
        """Miss or revalidation: wait for a fetch of the same key already under way, or make one."""
        key = request.url
        if request.method != "GET" or reason == "bypass" or self.hit_for_miss.get(key, 0.0) > time.monotonic():
            await self.fetch_now(request, send, stale, reason)
            return
        flight = self.flights.get(key)
        if flight is None:
            flight = self.flights[key] = asyncio.Event()
            try:
                await self.fetch_now(request, send, stale, reason)
            finally:
                if self.flights.get(key) is flight:
                    del self.flights[key]
                flight.set()
            return
        if await self.follow(request, send, flight, reason):
            return
        await self.fetch_now(request, send, stale, reason)

    async def follow(self, request: ClientRequest, send: Send, flight: asyncio.Event, reason: str) -> bool:
        """Wait for another request's fetch and answer from what it stored; False if that is not possible."""
        self.count("coalesced_wait")
        waited_since = time.time()
        try:
            await asyncio.wait_for(flight.wait(), self.settings.coalesce_timeout)
        except asyncio.TimeoutError:
            self.count("coalesce_timeout")
            return False
        entry, _ = self.select(request)
        if entry is None or entry.soft_purged:
            return False
        now = time.time()
        fetched_for_us = entry.response_time >= waited_since
        if not fetched_for_us and rfc.reuse(entry, request.directives, now) is not rfc.Reuse.FRESH:
            return False
        self.count("coalesced_hit")
        await self.deliver(request, entry, send, None, now, fwd=f"fwd={reason}; collapsed")
        return True

    def fence_refuses(self, request: ClientRequest, status: int, headers: Headers, stale: Stored | None) -> int | None:
        """The purge fence this response (or, for a 304, the stored entry it confirms) is older than, if any."""
        source = stale.headers if status == 304 and stale is not None else headers
        raw = source.get(self.settings.version_header)
        if raw is None or not raw.isdigit():
            return None
        tags = surrogate_keys(source.get_all("surrogate-key"), source.get_all("cache-tag"))
        return self.store.fenced(request.url, tags, int(raw), time.time())

    def remember_uncacheable(self, key: str) -> None:
        """Hit-for-miss: later requests for `key` fetch at once instead of queueing behind one another."""
        now = time.monotonic()
        if len(self.hit_for_miss) > 10_000:
            self.hit_for_miss = {k: t for k, t in self.hit_for_miss.items() if t > now}
        self.hit_for_miss[key] = now + self.settings.hit_for_miss_ttl

    def upstream_headers(self, request: ClientRequest) -> list[tuple[str, str]]:
        """What a parent edge gets beyond what an origin gets: the client's Host (it is part of the
        cache key) and the purge log position this edge has applied."""
        extra = [("host", request.host)]
        if self.listener is not None and self.listener.position is not None:
            extra.append((PURGE_POSITION, self.listener.position))
        return extra

    async def open_upstream(self, method: str, target: str, headers: list[tuple[str, str]], key: str,
                            body: bytes | None = None, parent_headers: list[tuple[str, str]] = ()) -> OriginResponse:
        """`Upstream.open`, timed to the response headers (the upstream histogram, the access log's origin_ms)."""
        assert self.upstream is not None
        started = time.perf_counter()
        response = await self.upstream.open(method, target, headers, key, body, parent_headers)
        elapsed = time.perf_counter() - started
        self.metrics.upstream_answered(response.served_by, elapsed)
        UPSTREAM_WAIT.set(elapsed + (UPSTREAM_WAIT.get() or 0.0))
        return response

    async def fetch_now(self, request: ClientRequest, send: Send, stale: Stored | None, reason: str) -> None:
        """Ask upstream (a parent, or the origin), store what may be stored, deliver."""
        assert self.upstream is not None
        decision = await self.shield.admit(request.client_ip, request.method, request.path, request.headers,
                                           origin_bound=True)
        if not decision.allowed:
            if decision.shed and stale is not None:
                self.count("stale_origin_budget")
                await self.deliver(request, stale, send, "hit", time.time(), detail="origin-budget", fwd="fwd=stale")
            else:
                await self.refuse(send, decision)
            return
        self.count("miss" if stale is None else "revalidate")
        delay = 0.05
        deadline = time.monotonic() + self.settings.fence_wait
        while True:
            headers = self.forward_headers(request, stale, to_store=True)
            request_time = time.time()
            serial = self.store.purge_serial
            try:
                response = await self.open_upstream(request.method, request.target, headers, request.url,
                                                    parent_headers=self.upstream_headers(request))
            except OriginError as exc:
                await self.origin_failed(request, send, stale, exc)
                return
            resp_headers = Headers.from_raw(response.raw_headers)
            fence = self.fence_refuses(request, response.status, resp_headers, stale)
            if fence is None:
                break
            # Older than a purge's version fence: a replica that has not caught up. Ask again.
            await response.close()
            self.count("fenced_refetch")
            if stale is not None and response.status == 304:
                self.store.delete(stale.key)
                stale = None
            if time.monotonic() + delay > deadline:
                await self.send_error(send, 503, f"origin has not caught up with version {fence} of this content yet",
                                      "fwd=miss; detail=version-fence", [(b"retry-after", b"1")])
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        response_time = time.time()
        try:
            if stale is not None and response.status == 304:
                await self.freshen(request, send, stale, resp_headers, request_time, response_time, serial)
                return
            if stale is not None and response.status >= 500 and rfc.may_serve_stale_on_error(
                stale, request.directives, response_time
            ):
                self.count("stale_if_error")
                await self.deliver(request, stale, send, "hit", response_time, detail="stale-if-error",
                                   fwd=f"fwd=stale; fwd-status={response.status}")
                return
            why_not = rfc.uncacheable_reason(request.method, response.status, request.headers, resp_headers, self.policy)
            if why_not is None and request.method == "HEAD":
                why_not = "method"
            fwd = f"fwd={reason}; fwd-status={response.status}"
            if why_not is not None:
                if stale is not None:
                    self.store.delete(stale.key)
                self.remember_uncacheable(request.url)
                await self.stream(request, send, response, resp_headers, f"{self.id}; {fwd}; detail={why_not}")
                return
            await self.stream_and_store(request, send, response, resp_headers, request_time, response_time,
                                        stale, fwd, serial)
        finally:
            await response.close()

    async def origin_failed(self, request: ClientRequest, send: Send, stale: Stored | None, exc: OriginError) -> None:
        now = time.time()
        if stale is not None and rfc.may_serve_stale_on_error(stale, request.directives, now):
            self.count("stale_if_error")
            await self.deliver(request, stale, send, "hit", now, detail="stale-if-error", fwd="fwd=stale; fwd-status=0")
            return
        if stale is not None and exc.status == 503 and self.within_grace(stale, now):
            self.count("stale_grace")
            await self.deliver(request, stale, send, "hit", now, detail="stale-grace-origin-down", fwd="fwd=stale")
            return
        self.count(f"origin_error_{exc.status}")
        log.warning("%s %s: %s", request.method, request.url, exc.message)
        await self.send_error(send, exc.status, exc.message, "fwd=miss; detail=origin-error")

    def within_grace(self, entry: Stored, now: float) -> bool:
        """The operator's grace: stale while no origin is available, unless the response forbids stale serving."""
        if self.settings.stale_grace <= 0 or entry.rules.must_revalidate or entry.rules.no_cache:
            return False
        return -entry.ttl(now) <= self.settings.stale_grace

    def make_entry(self, request: ClientRequest, status: int, headers: Headers, body: bytes,
                   request_time: float, response_time: float) -> Stored:
        """An entry for a storable response (RFC 9111 §3.1: only end-to-end fields are kept)."""
        stored = headers.remove(rfc.stored_fields_to_drop(headers, self.policy))
        if "date" not in stored:
            stored.items.append(("date", format_http_date(response_time)))  # RFC 9110 §6.6.1
        # A variant's key holds each field its Vary names as `name=value`, normalised (the bare name: absent).
        selecting = []
        for name in parse_vary(stored.get_all("vary")) or ():
            value = normalise_selecting_value(name, request.headers.get_all(name))
            selecting.append(name if value is None else f"{name}={value}")
        key = variant_key(request.url, selecting)
        # Held as long as the entry, once, as bytes, the delivered fields first (see Stored).
        # Content-Length is the body's, and Age is worked out from the freshness: neither is kept.
        wire: list[tuple[bytes, bytes]] = []
        held: list[tuple[bytes, bytes]] = []  # not delivered
        for k, v in stored.items:
            if k not in UNKEPT and "\0" not in v:
                (held if k in self._strip else wire).append((k.encode("latin-1"), v.encode("latin-1")))
        return rfc.assess(status, stored, request_time, response_time, self.policy, Stored,
                          key=key, body=body, status=status, fields=field_block(wire, held))

    def put(self, request: ClientRequest, entry: Stored, stale: Stored | None, fetched_at: int) -> bool:
        """Store `entry` (fetched when the purge serial was `fetched_at`), replacing the variant it renews."""
        if self.fence_refuses(request, entry.status, entry.headers, None) is not None:
            self.count("fenced_not_stored")  # a purge with a newer version arrived while it was fetched
            return False
        replaced = [e for e in self.store.variants(request.url) if e.key == entry.key or e is stale]
        stored = self.store.put(entry, replaced, fetched_at)
        self.count("stored" if stored else "not_stored_too_large")
        return stored

    async def freshen(self, request: ClientRequest, send: Send, stale: Stored, validation: Headers,
                      request_time: float, response_time: float, serial: int) -> None:
        """A 304 answered our conditional request: update the stored fields, then deliver (RFC 9111 §4.3.4)."""
        merged = rfc.merge_304(stale.headers, validation)
        entry = self.make_entry(request, stale.status, merged, stale.body, request_time, response_time)
        if rfc.uncacheable_reason("GET", stale.status, request.headers, merged, self.policy) is None:
            self.put(request, entry, stale, serial)
        else:  # e.g. the 304 set a cookie: this client gets it, the cache keeps nothing
            self.store.delete(stale.key)
        await self.deliver(request, entry, send, None, response_time, fwd="fwd=stale; fwd-status=304; stored")

    async def stream_and_store(self, request: ClientRequest, send: Send, response: OriginResponse, headers: Headers,
                               request_time: float, response_time: float, stale: Stored | None, fwd: str,
                               serial: int) -> None:
        """Deliver a storable response while reading it; store it once it arrived whole."""
        if CLIENT_CONDITIONALS.intersection(k for k, _ in request.headers.items):
            # The client's own conditional or range applies to the stored whole: read it first.
            body = await self.read_whole(response)
            if body is None:
                await self.send_error(send, 502, "origin sent an incomplete or oversized body")
                return
            entry = self.make_entry(request, response.status, headers, body, request_time, response_time)
            stored = self.put(request, entry, stale, serial)
            await self.deliver(request, entry, send, None, response_time,
                               fwd=f"{fwd}; stored" if stored else fwd)
            return
        out = self.deliverable(headers, request)
        if "date" not in headers:
            out.append((b"date", format_http_date(response_time).encode()))
        out += [(b"cache-status", f"{self.id}; {fwd}; stored".encode()), self._served_by]
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        buffer = bytearray()
        keep = self.store.fits(0)
        length = headers.get("content-length")
        remaining = int(length) if length is not None and length.isdigit() else -1
        held = b""  # the chunk that completes a declared length goes out only once the entry is stored
        received = 0
        try:
            async for chunk in response.chunks():
                received += len(chunk)
                if keep:
                    buffer += chunk
                    keep = self.store.fits(len(buffer))
                remaining -= len(chunk)
                if remaining == 0:
                    held = chunk
                else:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except BODY_ERRORS as exc:
            # A cut-off body: nothing is stored, and returning without finishing the response
            # makes the server close the client's connection, so the client sees it incomplete too.
            self.count("origin_body_error")
            log.warning("origin body failed for %s: %s", request.url, exc)
            return
        finally:
            self.count("upstream_bytes", received)
            self.count("served_bytes_upstream", received)
        # Stored before the response ends, so whoever sees it complete finds it in the cache.
        if keep:
            entry = self.make_entry(request, response.status, headers, bytes(buffer), request_time, response_time)
            self.put(request, entry, stale, serial)
        else:
            self.count("not_stored_too_large")
            self.remember_uncacheable(request.url)
        await send({"type": "http.response.body", "body": held, "more_body": False})

    async def read_whole(self, response: OriginResponse) -> bytes | None:
        buffer = bytearray()
        try:
            async for chunk in response.chunks():
                buffer += chunk
                if not self.store.fits(len(buffer)):
                    return None
        except BODY_ERRORS:
            self.count("origin_body_error")
            return None
        finally:
            self.count("upstream_bytes", len(buffer))
        return bytes(buffer)

    def deliverable(self, headers: Headers, request: ClientRequest) -> list[tuple[bytes, bytes]]:
        """An origin response's fields as sent on: end-to-end only, targeted and tag fields stripped
        (except for a child edge, which needs them to cache and tag the response itself)."""
        kept = rfc.end_to_end(headers).remove(("x-served-by",))
        return (kept if request.surrogate else kept.remove(self._strip)).raw()

    async def stream(self, request: ClientRequest, send: Send, response: OriginResponse, headers: Headers,
                     cache_status: str) -> None:
        """Deliver an origin response without storing it."""
        out = self.deliverable(headers, request)
        out += [(b"cache-status", cache_status.encode("latin-1")), self._served_by]
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        received = 0
        try:
            async for chunk in response.chunks():
                received += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            self.count("upstream_bytes", received)
            self.count("served_bytes_upstream", received)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- background refresh (stale-while-revalidate) ---------------------------
    def refresh_in_background(self, request: ClientRequest, entry: Stored) -> None:
        if entry.key in self.refreshing:
            return
        task = asyncio.create_task(self.refresh(request, entry))
        self.refreshing[entry.key] = task
        task.add_done_callback(lambda _: self.refreshing.pop(entry.key, None))

    async def refresh(self, request: ClientRequest, stale: Stored) -> None:
        assert self.upstream is not None
        if not (await self.shield.admit(None, "GET", request.path, request.headers, origin_bound=True)).allowed:
            self.count("background_refresh_over_budget")
            return
        self.count("background_refresh")
        get = ClientRequest("GET", request.target, request.host, request.url,
                            request.headers.remove(CLIENT_CONDITIONALS), request.client, rfc.Directives({}))
        request_time = time.time()
        serial = self.store.purge_serial
        try:
            response = await self.open_upstream("GET", get.target, self.forward_headers(get, stale, to_store=True),
                                                get.url, parent_headers=self.upstream_headers(get))
        except OriginError:
            self.count("background_refresh_failed")
            return
        try:
            response_time = time.time()
            headers = Headers.from_raw(response.raw_headers)
            if self.fence_refuses(get, response.status, headers, stale) is not None:
                self.count("fenced_refetch")
            elif response.status == 304:
                merged = rfc.merge_304(stale.headers, headers)
                entry = self.make_entry(get, stale.status, merged, stale.body, request_time, response_time)
                self.put(get, entry, stale, serial)
            elif rfc.uncacheable_reason("GET", response.status, get.headers, headers, self.policy) is None:
                body = await self.read_whole(response)
                if body is not None:
                    entry = self.make_entry(get, response.status, headers, body, request_time, response_time)
                    self.put(get, entry, stale, serial)
            else:
                self.count("background_refresh_failed")
        finally:
            await response.close()

    # -- pass -----------------------------------------------------------------
    async def pass_(self, request: ClientRequest, receive: Receive, send: Send) -> None:
        """Methods the cache does not answer: forward, invalidate on success (RFC 9111 §4.4), deliver."""
        assert self.upstream is not None
        decision = await self.shield.admit(request.client_ip, request.method, request.path, request.headers,
                                           origin_bound=True)
        if not decision.allowed:
            await self.refuse(send, decision)
            return
        self.count("pass")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.settings.shield.sizes.max_body:
                await self.send_error(send, 413, "request body too large")
                return
            if not message.get("more_body", False):
                break
        headers = self.forward_headers(request, None, to_store=False)
        try:
            response = await self.open_upstream(request.method, request.target, headers, request.url, bytes(body),
                                                parent_headers=self.upstream_headers(request))
        except OriginError as exc:
            await self.send_error(send, exc.status, exc.message, "fwd=method; detail=origin-error")
            return
        try:
            resp_headers = Headers.from_raw(response.raw_headers)
            if rfc.invalidates(request.method, response.status):
                self.invalidate(request, resp_headers)
            await self.stream(request, send, response, resp_headers, f"{self.id}; fwd=method")
        finally:
            await response.close()

    def invalidate(self, request: ClientRequest, response: Headers) -> None:
        """Drop the target and same-host Location / Content-Location URLs (RFC 9111 §4.4)."""
        self.count("invalidation")
        self.store.purge_url(request.url)
        for name in ("location", "content-location"):
            value = response.get(name)
            if not value:
                continue
            parts = urlsplit(value)
            if parts.netloc and parts.netloc.lower() != request.host:
                continue
            path = parts.path if parts.path.startswith("/") else request.target.rsplit("/", 1)[0] + "/" + parts.path
            self.store.purge_url(request.host + normalise_path(path) + (f"?{parts.query}" if parts.query else ""))

    # -- deliver --------------------------------------------------------------
    async def deliver(self, request: ClientRequest, entry: Stored, send: Send, hit: str | None, now: float,
                      detail: str | None = None, fwd: str | None = None) -> None:
        """Answer from a stored entry: 304 to a matching conditional, 206/416 to a range, else the whole."""
        extra = self.hit_fields(entry, now, hit, detail, fwd)
        if (entry.status == 200 and ("if-none-match" in request.headers or "if-modified-since" in request.headers)
                and rfc.not_modified(request.headers, entry.headers, entry.response_time)):
            headers = [(k, v) for k, v in entry.wire if k.decode("latin-1") in rfc.NOT_MODIFIED_FIELDS]
            await send({"type": "http.response.start", "status": 304, "headers": headers + extra})
            await send({"type": "http.response.body", "body": b""})
            return
        body = entry.body
        status = entry.status
        headers = list(entry.wire) if not request.surrogate else self.deliverable(entry.headers, request)
        if request.surrogate:
            headers = [(k, v) for k, v in headers if k not in (b"content-length", b"age")]
        wanted = request.headers.get("range") if status == 200 else None
        if wanted and self.if_range_holds(request, entry):
            chosen = parse_range(wanted, len(body))
            if chosen == "unsatisfiable":
                headers = [(b"content-range", f"bytes */{len(body)}".encode())]
                headers += [(b"content-length", b"0")]
                await send({"type": "http.response.start", "status": 416, "headers": headers + extra})
                await send({"type": "http.response.body", "body": b""})
                return
            if isinstance(chosen, tuple):
                first, last = chosen
                status = 206
                headers.append((b"content-range", f"bytes {first}-{last}/{len(body)}".encode()))
                body = body[first:last + 1]
        headers.append((b"content-length", str(len(body)).encode()))
        if request.method == "HEAD":
            body = b""
        self.count("served_bytes_cache", len(body))
        await send({"type": "http.response.start", "status": status, "headers": headers + extra})
        await send({"type": "http.response.body", "body": body})

    def hit_fields(self, entry: Stored, now: float, hit: str | None, detail: str | None = None,
                   fwd: str | None = None) -> list[tuple[bytes, bytes]]:
        """Age, Cache-Status (RFC 9211) and X-Served-By of an answer from the cache at `now`."""
        age = entry.age(now)
        ttl = entry.lifetime - age
        status = self._status_id
        if hit:
            status += b"; " + hit.encode()
        if fwd:
            status += b"; " + fwd.encode()
        status += b"; ttl=%d" % (ttl if ttl > -1e9 else 0)
        if detail:
            status += b"; detail=" + detail.encode()
        return [(b"age", b"%d" % (age if age < AGE_CAP else AGE_CAP)), (b"cache-status", status), self._served_by]

    @staticmethod
    def if_range_holds(request: ClientRequest, entry: Stored) -> bool:
        """If-Range (RFC 9110 §13.1.5): serve the range only when the validator still matches (strongly)."""
        condition = request.headers.get("if-range")
        if condition is None:
            return True
        etag = entry.headers.get("etag")
        if condition.startswith(('"', "W/")):
            return etag is not None and not etag.startswith("W/") and condition == etag
        return condition == entry.headers.get("last-modified")

    async def refuse(self, send: Send, decision: Decision) -> None:
        """The shield's answer: 429 with Retry-After and RateLimit fields, or 503 past the origin budget."""
        self.count(f"shield_{decision.reason}")
        await self.send_error(send, decision.status, decision.message, extra=list(decision.headers))

    async def send_error(self, send: Send, status: int, message: str, fwd: str | None = None,
                         extra: list[tuple[bytes, bytes]] = ()) -> None:
        extra = [*extra, (b"cache-status", f"{self.id}; {fwd}".encode())] if fwd else list(extra)
        extra.append(self._served_by)
        headers, body = _plain(status, message, extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: EdgeSettings | None = None, purge_log: PurgeLog | None = None) -> Edge:
    """The edge as an ASGI app (uvicorn: `--factory edge.app:create_app`); `purge_log` for an in-process fleet."""
    return Edge(settings or EdgeSettings(), purge_log)
