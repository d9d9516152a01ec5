"""The purge service's REST API: authenticated purges logged durably, then tracked per edge until applied.

    POST /purges            {"kind": "url"|"prefix"|"tag"|"event"|"all", ...}  -> 202 with the purge id
    GET  /purges            the last purges in the log, newest first, each with its status; ?limit=N
    GET  /purges/{id}       which live edges applied it (and when), which are pending; ?wait=SECONDS
    GET  /edges             the edge registry, with liveness and hit ratio
    GET  /status            the status page (HTML, no token; it asks for one to read the calls above)
    GET  /health            liveness of the service and of its log
    GET  /metrics           Prometheus metrics (no token)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import string
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from cdn.worker_metrics import this_worker
from purge_api.log import EdgeInfo, LogUnavailable, NotReplicated, Purge, PurgeLog, new_purge_id, open_log
from purge_api.metrics import CountResponses, PurgeApiMetrics
from purge_api.settings import PurgeApiSettings
from purge_api.status import status_page

KINDS = ("url", "prefix", "tag", "event", "all")
MAX_VALUE_LENGTH = 2048
MAX_IDEMPOTENCY_KEY = 200
DEFAULT_LISTED = 20
MAX_LISTED = 100


class PayloadError(Exception):
    """A purge request that is well-formed JSON but asks for something invalid (422)."""


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def event_tags(templates: dict[str, list[str]], name: str, fields: dict[str, Any]) -> list[str]:
    """The tags an event stands for, by the configured templates; PayloadError naming what is missing."""
    if name not in templates:
        raise PayloadError(f"unknown event {name!r}; known: {', '.join(sorted(templates))}")
    tags = []
    for template in templates[name]:
        needed = [field for _, field, _, _ in string.Formatter().parse(template) if field]
        missing = [f for f in needed if f not in fields]
        if missing:
            raise PayloadError(f"event {name!r} needs field {missing[0]!r}")
        tags.append(template.format(**{f: fields[f] for f in needed}))
    return tags


def fully_applied(status: dict[str, Any]) -> bool:
    """Whether a purge status says every live edge applied the purge (and its delayed repeat, if any)."""
    return bool(status["complete"] and status.get("repurge", {"complete": True})["complete"])


def _check_value(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{kind} values must be non-empty strings")
    if len(value) > MAX_VALUE_LENGTH:
        raise PayloadError(f"{kind} value longer than {MAX_VALUE_LENGTH} characters")
    if not value.isprintable():
        raise PayloadError(f"{kind} value {value[:40]!r} contains control characters")
    if kind == "tag" and any(c.isspace() for c in value):
        raise PayloadError(f"tag {value!r} contains whitespace")
    if kind in ("url", "prefix") and not value.startswith(("http://", "https://")):
        raise PayloadError(f"{kind} {value!r} must be an absolute http:// or https:// URL")
    return value


def parse_purge(payload: Any, settings: PurgeApiSettings) -> Purge:
    """Validate a purge request body into a Purge (events resolved to tags)."""
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object")
    unknown = set(payload) - {"kind", "values", "soft", "event", "fields", "version"}
    if unknown:
        raise PayloadError(f"unknown field {sorted(unknown)[0]!r}")
    kind = payload.get("kind")
    if kind not in KINDS:
        raise PayloadError(f"kind must be one of {', '.join(KINDS)}")
    soft = payload.get("soft", False)
    if not isinstance(soft, bool):
        raise PayloadError("soft must be true or false")
    version = payload.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise PayloadError("version must be a non-negative integer")
    event = None
    fenced = None
    if kind == "event":
        event = payload.get("event")
        fields = payload.get("fields", {})
        if not isinstance(event, str) or not event:
            raise PayloadError("an event purge needs an event name")
        if not isinstance(fields, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in fields.values()):
            raise PayloadError("fields must be an object of strings and integers")
        values = event_tags(settings.events, event, fields)
        fence_templates = settings.event_fences.get(event, settings.events[event][:1])
        fenced = tuple(event_tags({event: fence_templates}, event, fields)) if version is not None else None
        kind = "tag"
    elif kind == "all":
        values = []
    else:
        values = payload.get("values")
        if not isinstance(values, list) or not values:
            raise PayloadError(f"a {kind} purge needs a non-empty list of values")
    if len(values) > settings.max_values:
        raise PayloadError(f"at most {settings.max_values} values in one purge (got {len(values)})")
    values = list(dict.fromkeys(_check_value(kind, v) for v in values))
    return Purge(id=new_purge_id(), kind=kind, values=tuple(values), soft=soft, created_at=time.time(),
                 version=version, event=event, fenced=fenced)


class PurgeService:
    """The API's state: the log, auth, and status tracking."""

    def __init__(self, settings: PurgeApiSettings, purge_log: PurgeLog | None = None) -> None:
        self.settings = settings
        self.log = purge_log or open_log(settings.redis, prefix=settings.redis_prefix, maxlen=settings.log_maxlen,
                                         record_ttl=settings.status_ttl, replicas=settings.replicas,
                                         replica_timeout=settings.replica_timeout)
        self.owns_log = purge_log is None
        self.repurges: dict[str, tuple[str, float]] = {}  # first purge id -> its delayed repeat's id, due time
        self._tasks: set[asyncio.Task[None]] = set()
        self.metrics = PurgeApiMetrics(this_worker())  # one of several worker processes: metrics served together

    def authorise(self, request: Request, write: bool) -> JSONResponse | None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return error(401, "missing bearer token (Authorization: Bearer TOKEN)")
        if self.settings.token is not None and hmac.compare_digest(given.encode(), self.settings.token.encode()):
            return None
        if any(hmac.compare_digest(given.encode(), t.encode()) for t in self.settings.read_tokens):
            return error(403, "this token may read purge status but not purge") if write else None
        return error(403, "token not accepted")

    async def status(self, purge_id: str) -> dict[str, Any] | None:
        found = await self.log.find(purge_id)
        if found is None:
            return None
        # The registry first: an edge acknowledges before it heartbeats, so an ack is never missed.
        return await self.describe(*found, await self.log.edges())

    async def recent(self, count: int) -> list[dict[str, Any]]:
        """The status of each of the last `count` purges in the log, newest first."""
        entries = await self.log.recent(count)
        edges = await self.log.edges()  # before any ack is read, as in `status`
        return [await self.describe(position, purge, edges) for position, purge in entries]

    async def describe(self, position: str, purge: Purge, edges: list[EdgeInfo]) -> dict[str, Any]:
        """A purge with the live edges that applied it and those still pending (`edges` read before its acks)."""
        now = time.time()
        acks = await self.log.acks(purge.id)
        applied: dict[str, Any] = {}
        pending: list[str] = []
        for edge in sorted(edges, key=lambda e: e.id):
            live = now - edge.heartbeat_at <= self.settings.live_after
            if edge.id in acks:
                applied[edge.id] = {"at": acks[edge.id], "after_ms": round((acks[edge.id] - purge.created_at) * 1000, 1),
                                    "region": edge.region}
            elif live and edge.has_applied(position):
                applied[edge.id] = {"at": None, "after_ms": None, "region": edge.region, "note": "started after the purge"}
            elif live:
                pending.append(edge.id)
        answer = {
            "id": purge.id, "kind": purge.kind, "values": list(purge.values), "soft": purge.soft,
            "event": purge.event, "version": purge.version, "created_at": purge.created_at, "position": position,
            "complete": not pending, "applied": applied, "pending": pending,
        }
        if purge.id in self.repurges:
            repeat_id, due_at = self.repurges[purge.id]
            answer["repurge"] = await self.status(repeat_id) or {
                "id": repeat_id, "scheduled_at": due_at, "complete": False, "applied": {}, "pending": []}
        return answer

    async def wait(self, purge_id: str, seconds: float) -> dict[str, Any] | None:
        started = time.monotonic()
        deadline = started + min(seconds, self.settings.max_wait)
        delay = 0.002
        while True:
            answer = await self.status(purge_id)
            if answer is None:
                return None
            if fully_applied(answer):
                self.metrics.waits.labels("complete").observe(time.monotonic() - started)
                return answer
            if time.monotonic() >= deadline:
                answer["timed_out"] = True
                self.metrics.waits.labels("timed_out").observe(time.monotonic() - started)
                return answer
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def schedule_repurge(self, purge: Purge, delay: float) -> None:
        """Log the same purge again after `delay`: a refill from a lagging replica meanwhile is purged too."""
        repeat = replace(purge, id=purge.id + "-r", created_at=0.0)
        self.repurges[purge.id] = (repeat.id, time.time() + delay)
        if len(self.repurges) > 100_000:
            self.repurges.pop(next(iter(self.repurges)))

        async def later() -> None:
            await asyncio.sleep(delay)
            for attempt in range(20):
                try:
                    await self.log.append(replace(repeat, created_at=time.time()))
                    return
                except LogUnavailable:
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt))

        task = asyncio.create_task(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.owns_log:
            await self.log.close()


def _limit_param(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LISTED
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_LISTED):
        raise PayloadError(f"limit must be a whole number from 1 to {MAX_LISTED}")
    return int(raw)


def _wait_param(request: Request) -> float | None:
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise PayloadError("wait must be a number of seconds") from None
    if not 0 <= value <= 3600:
        raise PayloadError("wait must be between 0 and 3600 seconds")
    return value


def create_app(settings: PurgeApiSettings | None = None, purge_log: PurgeLog | None = None) -> Starlette:
    """The purge API as an ASGI app; `purge_log` shares an in-process log with edges in the same process."""
    settings = settings or PurgeApiSettings()
    service = PurgeService(settings, purge_log)

    async def create(request: Request) -> JSONResponse:
        if (denied := service.authorise(request, write=True)) is not None:
            return denied
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body:
            return error(413, f"body over {settings.max_body} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body:
                return error(413, f"body over {settings.max_body} bytes")
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
            return error(400, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return error(400, "body is not valid JSON")
        try:
            purge = parse_purge(payload, settings)
            wait = _wait_param(request)
        except PayloadError as exc:
            return error(422, str(exc))
        try:
            position, logged = await service.log.append(purge, key, settings.idempotency_ttl)
        except NotReplicated as exc:  # edges may apply it, but a failover now could lose it: not acknowledged
            return error(503, "purge logged but not yet held by the required replicas; retry with the same "
                              "Idempotency-Key", id=exc.purge_id, detail=str(exc))
        except LogUnavailable as exc:
            return error(503, "purge log unavailable: the purge was not logged; retry", detail=str(exc))
        replayed = logged.id != purge.id
        if replayed and (logged.kind, logged.values, logged.soft, logged.version) != (
                purge.kind, purge.values, purge.soft, purge.version):
            return error(422, "Idempotency-Key already used for a different purge", id=logged.id)
        if replayed:
            service.metrics.replayed.inc()
        else:
            service.metrics.logged.labels("event" if purge.event else purge.kind, str(purge.soft).lower()).inc()
        if not replayed and settings.repurge_delay > 0:
            service.schedule_repurge(logged, settings.repurge_delay)
        answer: dict[str, Any] = {"id": logged.id, "position": position, "replayed": replayed,
                                  "status_url": f"/purges/{logged.id}"}
        if wait is not None:
            try:
                answer.update(await service.wait(logged.id, wait) or {})
            except LogUnavailable as exc:
                return error(503, "purge logged, but its status is unavailable", id=logged.id, detail=str(exc))
            return JSONResponse(answer, status_code=200)
        return JSONResponse(answer, status_code=202)

    async def show(request: Request) -> JSONResponse:
        if (denied := service.authorise(request, write=False)) is not None:
            return denied
        try:
            wait = _wait_param(request)
        except PayloadError as exc:
            return error(422, str(exc))
        purge_id = request.path_params["purge_id"]
        try:
            answer = await (service.wait(purge_id, wait) if wait else service.status(purge_id))
        except LogUnavailable as exc:
            return error(503, "purge log unavailable", detail=str(exc))
        if answer is None:
            service.metrics.status_reads.labels("not_found").inc()
            return error(404, f"no purge {purge_id!r} (unknown, or trimmed from the log)")
        service.metrics.status_reads.labels("complete" if fully_applied(answer) else "pending").inc()
        return JSONResponse(answer)

    async def listing(request: Request) -> JSONResponse:
        if (denied := service.authorise(request, write=False)) is not None:
            return denied
        try:
            limit = _limit_param(request)
        except PayloadError as exc:
            return error(422, str(exc))
        try:
            purges = await service.recent(limit)
        except LogUnavailable as exc:
            return error(503, "purge log unavailable", detail=str(exc))
        return JSONResponse({"now": time.time(), "purges": purges})

    async def edges(request: Request) -> JSONResponse:
        if (denied := service.authorise(request, write=False)) is not None:
            return denied
        try:
            registered = await service.log.edges()
        except LogUnavailable as exc:
            return error(503, "purge log unavailable", detail=str(exc))
        now = time.time()
        return JSONResponse({"edges": [edge_view(e, now, settings.live_after) for e in sorted(registered, key=lambda e: e.id)]})

    async def health(request: Request) -> JSONResponse:
        try:
            await service.log.tail()
        except LogUnavailable as exc:
            return error(503, "purge log unavailable", detail=str(exc))
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST, headers={"cache-control": "no-store"})

    async def home(request: Request) -> Response:
        return RedirectResponse("status")  # relative: still right behind a proxy that adds a path prefix

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        snapshots = service.metrics.snapshots
        leaving = asyncio.create_task(snapshots.leave_forever(service.metrics.render_own)) if snapshots else None
        try:
            yield
        finally:
            if leaving is not None and snapshots is not None:
                leaving.cancel()
                snapshots.remove()
            await service.close()

    app = Starlette(lifespan=lifespan, routes=[
        Route("/purges", create, methods=["POST"]),
        Route("/purges", listing, methods=["GET"]),
        Route("/purges/{purge_id}", show),
        Route("/edges", edges),
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/status", status_page),
        Route("/", home),
    ], middleware=[Middleware(CountResponses, metrics=service.metrics)])
    app.state.service = service
    return app


def edge_view(edge: EdgeInfo, now: float, live_after: float) -> dict[str, Any]:
    age = now - edge.heartbeat_at
    return {"id": edge.id, "region": edge.region, "address": edge.address, "latitude": edge.latitude,
            "longitude": edge.longitude, "live": age <= live_after, "heartbeat_age": round(age, 3),
            "applied_through": edge.applied_through, "stats": edge.stats, "hit_ratio": hit_ratio(edge.stats)}


def hit_ratio(stats: dict[str, Any]) -> float | None:
    """Share of an edge's cacheable lookups answered from its cache since it started (None before the first).

    From its heartbeat's counters: hits (fresh, and stale served within max-stale or while revalidating)
    over hits + misses + revalidations; passes (uncacheable requests) are left out.
    """
    def count(name: str) -> float:
        value = stats.get(name, 0)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else 0

    hits = count("hits")
    lookups = hits + count("misses") + count("revalidations")
    return round(hits / lookups, 4) if lookups else None
