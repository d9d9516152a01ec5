"""The origin mock's Starlette app: the shop's routes, the control routes, and the middleware around them.

Shop (counted, may be delayed or faulted):
  GET  /api/products?page=N        a page of products, Surrogate-Key `products`
  GET  /api/products/{id}          one product, Surrogate-Key `products product-{id}`
  PUT|PATCH /api/products/{id}     change name, description or price: a new version
  GET|POST /api/cart               the session's cart: private, no-store, Set-Cookie
  GET  /static/...                 deterministic JS, CSS and JPEG assets, immutable
Control (neither counted nor faulted):
  GET  /healthz                    liveness and in-flight requests
  GET|POST|DELETE /_origin/stats   request accounting; POST /_origin/stats/reset too
  GET|POST|DELETE /_origin/faults  latency and faults at run time
  GET  /_origin/metrics            the accounting in the Prometheus text format
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin_mock.assets import ASSET_CACHE_CONTROL, ASSET_LAST_MODIFIED, AssetStore
from origin_mock.catalog import CATALOG_EPOCH, Catalog, Product, ProductNotFound
from origin_mock.conditional import match, not_modified
from origin_mock.database import Database, Replication, open_database
from origin_mock.faults import FaultPolicy, FaultSettings
from origin_mock.metrics import origin_registry
from origin_mock.middleware import Accounting, FaultInjection, Sleep
from origin_mock.purges import PurgeNotifier
from origin_mock.settings import OriginSettings
from origin_mock.stats import RequestStats

JSON = "application/json"
NO_STORE = {"cache-control": "no-store"}
MAX_REQUEST_BODY = 1024 * 1024

M = TypeVar("M", bound=BaseModel)


class ProductChanges(BaseModel):
    """Fields a PUT or PATCH may change (null or absent: unchanged); the others are the catalog's to set."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    price: float | None = Field(None, ge=0, le=1_000_000)


class CartLine(BaseModel):
    """A product to add to the cart."""

    model_config = ConfigDict(extra="forbid")

    product_id: int
    quantity: int = Field(1, ge=1, le=1000)


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())


async def read_json(request: Request, model: type[M]) -> M:
    """The request body as `model`; malformed JSON or fields become a 400 naming the problem."""
    body = await request.body()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "request body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(400, _problems(exc)) from None


READ_YOUR_WRITES_COOKIE = "read_primary_until"


class Shop:
    """The routes a real origin would have: catalog API, cart, static assets."""

    def __init__(self, settings: OriginSettings, catalog: Catalog, assets: AssetStore, replication: Replication) -> None:
        self.settings = settings
        self.purges = PurgeNotifier(settings.purge_api, settings.purge_token, settings.purge_version_fence)
        self.catalog = catalog
        self.database = catalog.database
        self.replication = replication
        self.assets = assets
        self.product_cache_control = (
            f"public, max-age={settings.product_max_age}, "
            f"stale-while-revalidate={settings.product_stale_while_revalidate}, "
            f"stale-if-error={settings.product_stale_if_error}"
        )

    def _product_headers(self, product: Product) -> dict[str, str]:
        return {
            "cache-control": self.product_cache_control,
            "etag": product.etag,
            "last-modified": product.last_modified,
            "surrogate-key": f"products product-{product.id}",
            "x-content-version": str(product.version),
        }

    def read_point(self, request: Request) -> tuple[float | None, str]:
        """Primary or a lagging replica for this read (the primary while the client's own write is recent)."""
        raw = request.cookies.get(READ_YOUR_WRITES_COOKIE)
        try:
            primary_until = float(raw) if raw else None
        except ValueError:
            primary_until = None
        return self.replication.read_point(primary_until)

    async def _find_product(self, request: Request, as_of: float | None = None) -> Product:
        product_id = request.path_params["product_id"]
        try:
            return await self.catalog.get(product_id, as_of)
        except ProductNotFound:
            raise HTTPException(404, f"product {product_id} not found",
                                headers={"surrogate-key": f"products product-{product_id}"}) from None

    async def product(self, request: Request) -> Response:
        """GET one product, or 304 when the client's copy is current; PUT or PATCH changes it."""
        if request.method in ("PUT", "PATCH"):
            return await self._update_product(request)
        as_of, served_from = self.read_point(request)
        product = await self._find_product(request, as_of)
        headers = self._product_headers(product) | {"x-served-from": served_from}
        if not_modified(request.headers.get("if-none-match"), request.headers.get("if-modified-since"),
                        product.etag, product.updated_at):
            return Response(status_code=304, headers=headers)
        return Response(product.json_body, media_type=JSON, headers=headers)

    async def _update_product(self, request: Request) -> Response:
        # PUT and PATCH alike change only the fields given: the mock has no use for replacement.
        product = await self._find_product(request)
        changes = await read_json(request, ProductChanges)
        if_match = request.headers.get("if-match")
        if if_match is not None and not match(if_match, product.etag):
            raise HTTPException(412, f"product {product.id} is at version {product.version}")
        product = await self.catalog.update(product.id, changes.model_dump(exclude_none=True))
        headers = self._product_headers(product) | NO_STORE | await self.purges.product_changed(product)
        response = Response(product.json_body, media_type=JSON, headers=headers)
        if self.replication.read_your_writes > 0:
            until = self.replication.clock() + self.replication.read_your_writes
            response.set_cookie(READ_YOUR_WRITES_COOKIE, f"{until:.3f}", max_age=int(self.replication.read_your_writes) + 1)
        return response

    async def products(self, request: Request) -> Response:
        """GET a page of products (`?page=N`, from 1), or 304 when the client's copy is current."""
        raw = request.query_params.get("page", "1")
        if not raw.isdigit() or int(raw) < 1:
            raise HTTPException(400, "page must be a positive integer")
        number = int(raw)
        size = self.settings.page_size
        as_of, served_from = self.read_point(request)
        items = await self.catalog.page(number, size, as_of)
        # Versions only grow, so their sum changes whenever any product on the page does.
        etag = f'"list-p{number}-{size}of{self.catalog.size}-v{sum(p.version for p in items)}"'
        updated_at = max((p.updated_at for p in items), default=CATALOG_EPOCH)
        headers = {
            "cache-control": self.product_cache_control,
            "etag": etag,
            "last-modified": formatdate(updated_at, usegmt=True),
            "surrogate-key": "products product-lists",
            "x-served-from": served_from,
        }
        if not_modified(request.headers.get("if-none-match"), request.headers.get("if-modified-since"), etag, updated_at):
            return Response(status_code=304, headers=headers)
        document = {"page": number, "page_size": size, "pages": self.catalog.page_count(size),
                    "total": self.catalog.size, "items": [p.as_dict() for p in items]}
        return Response(json.dumps(document, separators=(",", ":")).encode(), media_type=JSON, headers=headers)

    async def cart(self, request: Request) -> Response:
        """GET the session's cart, or POST `{"product_id": N, "quantity": K}` to add to it."""
        line = await read_json(request, CartLine) if request.method == "POST" else None
        if line is not None:
            try:
                await self.catalog.get(line.product_id)
            except ProductNotFound:
                raise HTTPException(404, f"product {line.product_id} not found") from None
        session = request.cookies.get("session")
        cart = await self.database.cart(session) if session else None
        if session is None or cart is None:
            session, cart = await self.database.new_session(), {}
        if line is not None:
            await self.database.add_to_cart(session, line.product_id, line.quantity)
            cart[line.product_id] = cart.get(line.product_id, 0) + line.quantity
        view = {"items": [{"product_id": p, "quantity": q} for p, q in sorted(cart.items())], "count": sum(cart.values())}
        response = JSONResponse(view, headers={"cache-control": "private, no-store"})
        response.set_cookie("session", session, httponly=True, samesite="lax")
        return response

    async def asset(self, request: Request) -> Response:
        """GET a static asset (the body only when needed: not for HEAD or 304)."""
        asset = self.assets.find(request.path_params["path"])
        if asset is None:
            raise HTTPException(404, "no such asset")
        headers = {
            "cache-control": ASSET_CACHE_CONTROL,
            "etag": asset.etag,
            "last-modified": ASSET_LAST_MODIFIED,
            "surrogate-key": f"static static-{asset.kind.name}",
        }
        if not_modified(request.headers.get("if-none-match"), request.headers.get("if-modified-since"),
                        asset.etag, CATALOG_EPOCH):
            return Response(status_code=304, headers=headers)
        if request.method == "HEAD":
            return Response(media_type=asset.kind.content_type, headers=headers | {"content-length": str(asset.size)})
        return Response(self.assets.body(asset), media_type=asset.kind.content_type, headers=headers)


class Control:
    """The mock's own routes: health, accounting, faults at run time."""

    def __init__(self, stats: RequestStats, faults: FaultPolicy, initial_faults: FaultSettings) -> None:
        self.stats = stats
        self.faults = faults
        self.initial_faults = initial_faults

    async def health(self, request: Request) -> Response:
        """Liveness and load: requests being served right now."""
        return JSONResponse({"status": "ok", "in_flight": self.stats.in_flight}, headers=NO_STORE)

    async def get_stats(self, request: Request) -> Response:
        """Counters since the last reset."""
        return JSONResponse(self.stats.snapshot(), headers=NO_STORE)

    async def reset_stats(self, request: Request) -> Response:
        """Reset the counters; answers with the counts they had, so none fall between a read and a reset."""
        snapshot = self.stats.snapshot()
        self.stats.reset()
        return JSONResponse(snapshot, headers=NO_STORE)

    async def get_faults(self, request: Request) -> Response:
        """Latency and faults in force."""
        return JSONResponse(self.faults.settings.model_dump(), headers=NO_STORE)

    async def set_faults(self, request: Request) -> Response:
        """Change some latency or fault fields (a JSON object); the others keep their values."""
        body = await request.body()
        try:
            changes = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(400, "request body is not valid JSON") from None
        if not isinstance(changes, dict):
            raise HTTPException(400, "request body must be a JSON object")
        try:
            self.faults.settings = FaultSettings.model_validate(self.faults.settings.model_dump() | changes)
        except ValidationError as exc:
            raise HTTPException(400, _problems(exc)) from None
        return JSONResponse(self.faults.settings.model_dump(), headers=NO_STORE)

    async def restore_faults(self, request: Request) -> Response:
        """Go back to the latency and faults the origin started with."""
        self.faults.settings = self.initial_faults
        return JSONResponse(self.faults.settings.model_dump(), headers=NO_STORE)


def _error_handler(not_found_max_age: int) -> Callable[[Request, Exception], Any]:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            headers.setdefault("cache-control", f"public, max-age={not_found_max_age}")
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=headers)

    return http_error


def replication_view(replication: Replication) -> dict[str, Any]:
    """The primary/replica set-up and where reads went: how far behind a read may be right now."""
    return {"replicas": replication.replicas, "lag_ms": replication.lag * 1000, "jitter_ms": replication.jitter * 1000,
            "max_lag_ms": (replication.lag + replication.jitter) * 1000 if replication.replicas else 0.0,
            "read_your_writes_ms": replication.read_your_writes * 1000, "reads": dict(replication.reads)}


def _closing(notifier: PurgeNotifier, database: Database) -> Callable[[Starlette], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await notifier.aclose()
        await database.close()

    return lifespan


def create_app(
    settings: OriginSettings,
    *,
    random_source: Callable[[], float] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Sleep = asyncio.sleep,
) -> Starlette:
    """The origin mock as an ASGI app; tests may script its randomness, clock and sleeping."""
    if random_source is None:
        random_source = random.Random(settings.seed).random
    database = open_database(settings.redis, settings.redis_prefix)
    catalog = Catalog(settings.products, database, clock=clock)
    replication = Replication(settings.replicas, settings.replication_lag_ms / 1000, settings.replication_jitter_ms / 1000,
                              settings.read_your_writes_ms / 1000, random_source, clock)
    assets = AssetStore(settings.assets, settings.asset_cache_bytes)
    stats = RequestStats(clock=clock)
    fault_settings = FaultSettings.model_validate(settings.model_dump(include=set(FaultSettings.model_fields)))
    faults = FaultPolicy(fault_settings, random_source)
    shop = Shop(settings, catalog, assets, replication)
    control = Control(stats, faults, fault_settings)
    registry = origin_registry(stats, replication)

    async def metrics(request: Request) -> Response:
        # Async, so the counters are read on the event loop that updates them.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST, headers=NO_STORE)

    routes = [
        Route("/api/products", shop.products, methods=["GET"]),
        Route("/api/products/{product_id:int}", shop.product, methods=["GET", "PUT", "PATCH"]),
        Route("/api/cart", shop.cart, methods=["GET", "POST"]),
        Route("/static/{path:path}", shop.asset, methods=["GET"]),
        Route("/healthz", control.health, methods=["GET"]),
        Route("/_origin/stats", control.get_stats, methods=["GET"]),
        Route("/_origin/stats", control.reset_stats, methods=["DELETE"]),
        Route("/_origin/stats/reset", control.reset_stats, methods=["POST"]),
        Route("/_origin/faults", control.get_faults, methods=["GET"]),
        Route("/_origin/faults", control.set_faults, methods=["POST"]),
        Route("/_origin/faults", control.restore_faults, methods=["DELETE"]),
        Route("/_origin/replication", lambda request: JSONResponse(replication_view(replication), headers=NO_STORE)),
        Route("/_origin/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(Accounting, stats=stats),
            Middleware(FaultInjection, policy=faults, stats=stats, sleep=sleep),
        ],
        exception_handlers={HTTPException: _error_handler(settings.not_found_max_age)},
        max_body_size=MAX_REQUEST_BODY,
    )
    app.router.lifespan_context = _closing(shop.purges, database)
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.assets = assets
    app.state.stats = stats
    app.state.faults = faults
    return app
