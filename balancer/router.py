"""The front door: a reverse proxy that sends each client to the nearest region with a healthy edge.

    receive -> place the client (X-Client-Geo, X-Client-Region, CIDR table, default region)
            -> route: nearest region with an available edge, then the cache key's edge in it (consistent hashing)
            -> forward (Host kept, hop-by-hop fields dropped, X-Forwarded-For and Via added), bodies streamed
            -> connection refused: the next edge of the region, then of the next-nearest region (idempotent only)
            -> deliver with X-Routed-To: <edge id>; region=<region>; distance_km=<n>

Plain ASGI on the request path; placement is `balancer.placement`, regions and
pools are `balancer.fleet`, connections to edges are `balancer.http_client`.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from balancer.discovery import RegistryWatcher
from balancer.fleet import EDGE_HEALTH_PATH, EdgeFleet, Route
from balancer.geo import REGIONS, Coordinates, round_trip_ms
from balancer.http_client import BadRequestHead, HttpClient, Response, UpstreamError
from balancer.placement import (
    GEO_HEADER,
    REGION_HEADER,
    CidrTable,
    Placement,
    place_client,
)
from balancer.pool import Failure
from balancer.router_metrics import router_registry
from balancer.router_settings import RouterSettings
from balancer.settings import HealthCheckSettings
from cdn.asgi import run_lifespan
from edge.origin import IDEMPOTENT_METHODS
from edge.policy import HOP_BY_HOP
from purge_api.log import PurgeLog, RedisPurgeLog

log = logging.getLogger("cdn.router")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

ADMIN_PREFIX = "/_router/"
ROUTED_TO = b"x-routed-to"
REPLAY_LIMIT = 64 * 1024  # request bodies up to this size are kept, so a dropped keep-alive connection can resend them
# Client fields the front door replaces or handles itself; every other end-to-end field goes to the edge as sent.
HOP_BY_HOP_FIELDS = frozenset(name.encode() for name in HOP_BY_HOP)
NOT_FORWARDED = HOP_BY_HOP_FIELDS | {b"host", b"via", b"x-forwarded-for", b"expect"}
CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive"})
GEO_FIELD, REGION_FIELD = GEO_HEADER.encode(), REGION_HEADER.encode()


class ClientDisconnected(Exception):
    """The client went away while its request body was being passed on."""


class BodyNotReplayable(Exception):
    """The request body must be sent again, but it was too large to keep."""


class ClientBody:
    """The client's request body, passed on as it arrives; one up to `keep` bytes is kept to be sent again."""

    def __init__(self, receive: Receive, keep: int = REPLAY_LIMIT) -> None:
        self.receive = receive
        self.keep = keep
        self.started = False
        self.complete = False
        self.kept: list[bytes] | None = []  # None once it outgrew `keep`
        self.kept_bytes = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._replay() if self.started else self._read()

    async def _read(self) -> AsyncIterator[bytes]:
        self.started = True
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected("client disconnected during its request body")
            chunk = message.get("body", b"")
            if chunk:
                if self.kept is not None:
                    self.kept_bytes += len(chunk)
                    if self.kept_bytes <= self.keep:
                        self.kept.append(chunk)
                    else:
                        self.kept = None
                yield chunk
            if not message.get("more_body", False):
                self.complete = True
                return

    async def _replay(self) -> AsyncIterator[bytes]:
        if not self.complete or self.kept is None:
            raise BodyNotReplayable("the request body was already passed on and cannot be sent again")
        for chunk in self.kept:
            yield chunk


def _plain(status: int, message: str, extra: list[tuple[bytes, bytes]] = ()) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = (message.rstrip("\n") + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *extra]
    return headers, body


def routed_to(route: Route, placement: Placement, hop_overhead_ms: float) -> bytes:
    """The X-Routed-To value: edge, region, and when the client was placed, distance and modelled round trip."""
    parts = [route.edge.id, f"region={route.region}"]
    if route.distance_km is not None:
        parts.append(f"distance_km={round(route.distance_km)}")
        parts.append(f"rtt_ms={round_trip_ms(route.distance_km, 1, hop_overhead_ms):.1f}")
    parts.append(f"placed={placement.placed_by}")
    return "; ".join(parts).encode("latin-1")


class FrontDoor:
    """The front door as an ASGI application."""

    def __init__(self, settings: RouterSettings, purge_log: PurgeLog | None = None) -> None:
        self.settings = settings
        regions = {**REGIONS, **{name: Coordinates(*where) for name, where in settings.regions.items()}}
        health = HealthCheckSettings(path=EDGE_HEALTH_PATH, interval=settings.health_interval,
                                     timeout=settings.health_timeout, rise=settings.health_rise,
                                     fall=settings.health_fall)
        self.fleet = EdgeFleet(health, regions)
        self.cidr = CidrTable(settings.cidr_regions)
        self.registry = purge_log
        self._owns_registry = False
        self.watcher: RegistryWatcher | None = None
        self.client: HttpClient | None = None
        self.counters: dict[str, int] = {}
        self.routed: dict[tuple[str, str], int] = {}  # (region, edge id) -> responses relayed
        self.metrics = router_registry(self)
        self._name = settings.id.encode()
        self._via = b"1.1 " + self._name  # on responses; requests carry the client's protocol version
        self._started = False

    # -- ASGI -----------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"].startswith(ADMIN_PREFIX):
                await self.admin(scope, send)
            else:
                await self.proxy(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        await run_lifespan(receive, send, self.start, self.stop)

    async def start(self) -> None:
        """Open the edge client, learn the edges (configured, then registered) and start health checks."""
        if self._started:
            return
        self._started = True
        s = self.settings
        self.client = HttpClient(s.connect_timeout, s.response_timeout, peer="edge")
        await self.fleet.set_edges(s.edges)
        if self.registry is None and s.redis:
            self.registry = RedisPurgeLog(s.redis, prefix=s.redis_prefix)
            self._owns_registry = True
        if self.registry is not None:
            self.watcher = RegistryWatcher(self.registry, self.fleet, s.edges, s.live_after, s.registry_interval)
            self.watcher.start()
        await self.fleet.start()

    async def stop(self) -> None:
        """Stop discovery and health checks; close every connection."""
        if self.watcher is not None:
            await self.watcher.stop()
            self.watcher = None
        await self.fleet.stop()
        if self._owns_registry and self.registry is not None:
            await self.registry.close()
            self.registry = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        self._started = False

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- place and route ------------------------------------------------------
    def place(self, geo: str | None, region: str | None, address: str | None) -> Placement:
        """Where the client is, from its location headers or address; never raises."""
        return place_client(geo, region, address, self.cidr, self.fleet.locations, self.settings.default_region)

    def choose(self, placement: Placement, key: str, exclude: frozenset[str] = frozenset()) -> Route | None:
        """The edge for this cache key: the nearest region with an available edge, then the key's edge in it."""
        return self.fleet.route(placement, key, exclude)

    # -- proxy ----------------------------------------------------------------
    async def proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._started:
            await self.start()
        self.count("requests")
        host: str | None = None
        hosts = 0
        geo = region = None
        via: list[bytes] = []
        forwarded_for: list[bytes] = []
        connection: list[bytes] = []
        chunked = False
        length: bytes | None = None
        forward: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:  # ASGI field names are lowercase
            if name not in NOT_FORWARDED:
                forward.append((name, value))
                if name == b"content-length":
                    length = value
                elif name == GEO_FIELD:
                    geo = value.decode("latin-1")
                elif name == REGION_FIELD:
                    region = value.decode("latin-1")
            elif name == b"host":
                hosts += 1
                host = value.decode("latin-1").strip()
            elif name == b"via":
                via.append(value)
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"connection":
                connection.append(value)
            elif name == b"transfer-encoding":
                chunked = True
        if hosts != 1 or not host or any(c in host for c in " /\\@"):
            self.count("bad_request")
            await self.send_error(send, 400, "bad request: a request needs exactly one valid Host header")
            return
        if via and self._name in {member.split()[1] for line in via for member in line.split(b",")
                                  if len(member.split()) > 1}:
            self.count("loop_detected")
            await self.send_error(send, 508, f"loop detected: this request already passed {self.settings.id} (Via)")
            return
        if connection:
            listed = {option.strip().lower() for line in connection for option in line.split(b",")}
            if listed - CONNECTION_OPTIONS:
                forward = [(k, v) for k, v in forward if k not in listed]
        if chunked:
            forward = [(k, v) for k, v in forward if k != b"content-length"]
        client = scope.get("client") or ("", 0)
        received_via = scope.get("http_version", "1.1").encode() + b" " + self._name
        forward += [(b"host", host.encode("latin-1")),
                    (b"via", b", ".join([*via, received_via])),
                    (b"x-forwarded-for", b", ".join([*forwarded_for, client[0].encode("latin-1")]))]
        target = (scope.get("raw_path") or scope["path"].encode("latin-1")).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        placement = self.place(geo, region, client[0])
        body = ClientBody(receive) if chunked or (length is not None and length.strip() != b"0") else None
        await self.forward(scope["method"], target, host.lower() + target, forward, body, chunked, placement, send)

    async def forward(self, method: str, target: str, key: str, headers: list[tuple[bytes, bytes]],
                      body: ClientBody | None, chunked: bool, placement: Placement, send: Send) -> None:
        """Send to the chosen edge; a refused connection moves an idempotent request to the next edge."""
        assert self.client is not None
        idempotent = method in IDEMPOTENT_METHODS
        tried: list[Route] = []
        last: UpstreamError | None = None
        exhausted = False
        for _ in range(self.settings.attempts if idempotent else 1):
            route = self.choose(placement, key, frozenset(r.edge.url for r in tried))
            if route is None:
                exhausted = True
                break
            attempt = route.pool.attempt(route.member)
            try:
                response = await self.client.open(method, route.member.url, target, headers, body, chunked,
                                                  replayable=idempotent)
            except UpstreamError as exc:
                attempt.failed(exc.failure)
                attempt.close()
                tried.append(route)
                last = exc
                if exc.failure is Failure.CONNECT:  # nothing was sent: safe to send elsewhere
                    self.count("edge_connect_failed")
                    continue
                break
            except ClientDisconnected:
                attempt.close()
                self.count("client_disconnected")
                return
            except BadRequestHead as exc:  # nothing was sent
                attempt.close()
                await self.send_error(send, 400, str(exc))
                return
            except BodyNotReplayable as exc:
                attempt.failed(Failure.PROTOCOL)
                attempt.close()
                self.count("edge_error_502")
                await self.send_error(send, 502, f"edge {route.edge.id} ({route.edge.region}) closed the connection: {exc}")
                return
            attempt.responded(response.status)
            where = (route.region, route.edge.id)
            self.routed[where] = self.routed.get(where, 0) + 1
            if tried:
                self.count("retried")
            try:
                await self.deliver(response, route, placement, send)
            finally:
                await response.close()
                attempt.close()
            return
        await self.no_answer(send, tried, last, exhausted)

    async def deliver(self, response: Response, route: Route, placement: Placement, send: Send) -> None:
        """Stream the edge's response to the client, without its hop-by-hop fields."""
        fields = response.raw_headers  # names in lower case
        drop = HOP_BY_HOP_FIELDS
        if any(k == b"connection" for k, _ in fields):
            drop = drop | {option.strip().lower() for k, v in fields if k == b"connection" for option in v.split(b",")}
        out = [(k, v) for k, v in fields if k not in drop]
        out += [(b"via", self._via), (ROUTED_TO, routed_to(route, placement, self.settings.hop_overhead_ms))]
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        ended = False
        try:
            async for chunk in response.chunks():
                ended = response.complete  # the last chunk also ends the body: one send fewer
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
        except UpstreamError as exc:
            # Returning without finishing makes the server close the client's connection,
            # so the client sees the body cut short too rather than mistaking it for whole.
            self.count("edge_body_error")
            log.warning("edge %s body failed: %s", route.edge.id, exc.message)
            return
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def no_answer(self, send: Send, tried: list[Route], last: UpstreamError | None, exhausted: bool) -> None:
        """No edge answered: 503 when none was available or every one refused, else the last failure (502, 504)."""
        if last is None or (exhausted and last.failure is Failure.CONNECT):
            self.count("no_edge")
            await self.send_error(send, 503, self.unavailable_message(tried), [(b"retry-after", b"1")])
            return
        edge = tried[-1].edge
        status = 504 if last.failure is Failure.TIMEOUT else 502
        self.count(f"edge_error_{status}")
        what = {Failure.CONNECT: "refused the connection", Failure.TIMEOUT: "did not answer in time"}.get(
            last.failure, "answered badly")
        await self.send_error(send, status, f"edge {edge.id} ({edge.region}) {what}")

    def unavailable_message(self, tried: list[Route]) -> str:
        """Why no edge could take the request, region by region."""
        availability = self.fleet.availability()
        if not availability:
            return "no edge is available: the front door knows no edges (set `edges`, or `redis` for the edge registry)"
        regions = ", ".join(f"{region}: {up} of {total} available" for region, (up, total) in availability.items())
        refused = f"; refused: {', '.join(r.edge.id for r in tried)}" if tried else ""
        return f"no healthy edge in any region ({regions}){refused}"

    async def send_error(self, send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] = ()) -> None:
        headers, body = _plain(status, message, [(b"via", self._via), *extra])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # -- admin ------------------------------------------------------------------
    async def admin(self, scope: Scope, send: Send) -> None:
        """`/_router/health` and `/_router/metrics` (no token): availability per region, Prometheus metrics;
        `/_router/edges` (bearer token): every pool."""
        if not self._started:
            await self.start()
        path = scope["path"]
        if path == ADMIN_PREFIX + "health":
            availability = self.fleet.availability()
            up = any(available for available, _ in availability.values())
            await self.send_json(send, 200 if up else 503, {
                "status": "ok" if up else "no edge available", "id": self.settings.id,
                "regions": {region: {"available": a, "edges": n} for region, (a, n) in availability.items()},
                "registry": None if self.watcher is None else {"reachable": self.watcher.reachable},
                "counters": self.counters,
            })
        elif path == ADMIN_PREFIX + "metrics":
            body = generate_latest(self.metrics)
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store")]})
            await send({"type": "http.response.body", "body": body})
        elif path == ADMIN_PREFIX + "edges":
            denied = self.authorise(scope)
            if denied is not None:
                await self.send_json(send, denied[0], {"error": denied[1]})
                return
            await self.send_json(send, 200, self.fleet.snapshot())
        else:
            await self.send_json(send, 404, {"error": f"no such endpoint: {path}"})

    def authorise(self, scope: Scope) -> tuple[int, str] | None:
        token = self.settings.admin_token
        if token is None:
            return 403, "admin endpoints are disabled: set admin_token"
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return 401, "missing bearer token"
        if not hmac.compare_digest(credentials.encode(), token.encode()):
            return 403, "wrong token"
        return None

    @staticmethod
    async def send_json(send: Send, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: RouterSettings | None = None, purge_log: PurgeLog | None = None) -> FrontDoor:
    """The front door as an ASGI app; `purge_log` (e.g. a `MemoryPurgeLog`) is the edge registry of an in-process fleet."""
    return FrontDoor(settings or RouterSettings(), purge_log)
