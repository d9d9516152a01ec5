"""The edge's local admin endpoints under /_edge/: health and metrics (open), stats and purges (bearer token)."""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from prometheus_client import CONTENT_TYPE_LATEST

from edge.purge_listener import apply_purge
from purge_api.log import Purge

if TYPE_CHECKING:
    from edge.app import Edge

PURGE_KINDS = ("url", "prefix", "tag", "all")
MAX_PURGE_VALUES = 256
MAX_BODY = 64 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_admin(edge: Edge) -> Starlette:
    token = edge.settings.admin_token

    def authorised(request: Request) -> JSONResponse | None:
        if token is None:
            return _error(403, "admin endpoints are disabled: set admin_token")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return _error(401, "missing bearer token")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _error(403, "wrong token")
        return None

    async def health(request: Request) -> JSONResponse:
        # in_flight lets a resource-based balancer in front of the edges steer by load.
        return JSONResponse({"status": "ok", "id": edge.id, "region": edge.settings.region, "in_flight": edge.in_flight})

    async def metrics(request: Request) -> Response:
        # No token, as scrapers expect; `metrics = false` turns the endpoint off where that is not wanted.
        return Response(edge.metrics.render(), media_type=CONTENT_TYPE_LATEST, headers={"cache-control": "no-store"})

    async def stats(request: Request) -> JSONResponse:
        if (denied := authorised(request)) is not None:
            return denied
        return JSONResponse({
            "id": edge.id,
            "region": edge.settings.region,
            "counters": edge.counters,
            "store": {"objects": len(edge.store), "bytes": edge.store.size, "capacity": edge.store.capacity,
                      "tags": edge.store.tag_count(), "evictions": edge.store.evictions,
                      "in_files": edge.file_bytes},  # bodies also held in files for sendfile (`sendfile_bytes`)
            # What a leak would grow: compared before and after a soak (benchmarks/soak.py). `tasks`
            # includes the one answering this request.
            "tasks": len(asyncio.all_tasks()),
            "in_flight": edge.in_flight,
            "fetches": len(edge.flights),
            "refreshes": len(edge.refreshing),
            "hit_for_miss": len(edge.hit_for_miss),
        })

    async def purge(request: Request) -> JSONResponse:
        if (denied := authorised(request)) is not None:
            return denied
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _error(413, f"purge body over {MAX_BODY} bytes")
        try:
            payload: Any = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return _error(400, "body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(400, "body must be a JSON object")
        kind = payload.get("kind")
        values = payload.get("values", [])
        soft = payload.get("soft", False)
        if kind not in PURGE_KINDS:
            return _error(422, f"kind must be one of {', '.join(PURGE_KINDS)}")
        if not isinstance(soft, bool):
            return _error(422, "soft must be true or false")
        if not isinstance(values, list) or not all(isinstance(v, str) and v and v.isprintable() for v in values):
            return _error(422, "values must be a list of non-empty printable strings")
        if len(values) > MAX_PURGE_VALUES:
            return _error(422, f"at most {MAX_PURGE_VALUES} values per purge")
        if kind != "all" and not values:
            return _error(422, f"a {kind} purge needs at least one value")
        count = apply_purge(edge.store, Purge(id="local", kind=kind, values=tuple(values), soft=soft))
        edge.count("admin_purge")
        return JSONResponse({"kind": kind, "soft": soft, "purged": count})

    async def pool(request: Request) -> JSONResponse:
        if (denied := authorised(request)) is not None:
            return denied
        return JSONResponse(edge.upstream.snapshot() if edge.upstream is not None else {})

    async def shield(request: Request) -> JSONResponse:
        if (denied := authorised(request)) is not None:
            return denied
        return JSONResponse(edge.shield.snapshot())

    routes = [
        Route("/_edge/health", health),
        Route("/_edge/shield", shield),
        Route("/_edge/pool", pool),
        Route("/_edge/stats", stats),
        Route("/_edge/purge", purge, methods=["POST"]),
    ]
    if edge.settings.metrics:
        routes.append(Route("/_edge/metrics", metrics))
    return Starlette(routes=routes)
