"""Settings of the origin mock (`[origin]` in the config file, `CDN_ORIGIN_*` in the environment)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cdn.config import ServiceSettings
from cdn.redis_url import RedisUrl
from origin_mock.faults import FaultSettings


class _ServerAndShop(ServiceSettings):
    """Where the origin listens and what its shop holds."""

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(9000, ge=0, le=65535, description="port to listen on")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("warning", description="server log level")
    products: int = Field(1000, ge=1, le=10_000_000, description="number of products in the catalog (ids 1..products)")
    page_size: int = Field(20, ge=1, le=1000, description="products per page of /api/products")
    product_max_age: int = Field(60, ge=0, description="max-age of product and list responses, seconds")
    product_stale_while_revalidate: int = Field(30, ge=0, description="stale-while-revalidate of product responses, seconds")
    product_stale_if_error: int = Field(300, ge=0, description="stale-if-error of product responses, seconds")
    not_found_max_age: int = Field(10, ge=0, description="max-age of 404 responses, seconds")
    assets: int = Field(100, ge=0, le=1_000_000, description="static assets per kind (js, css, img), numbered 1..assets")
    asset_cache_bytes: int = Field(64 * 1024 * 1024, ge=0, description="memory for generated asset bodies (LRU), bytes")
    redis: RedisUrl | None = Field(None, description="Redis URL of the shared store (products, carts), redis://host:port/db, or redis+sentinel://host:port[,host:port...]/service/db: several instances then act as one")
    redis_prefix: str = Field("origin:", description="prefix of the origin's Redis keys")
    replicas: int = Field(0, ge=0, le=64, description="read replicas (0: every read goes to the primary)")
    replication_lag_ms: float = Field(0.0, ge=0, description="how far behind the primary a replica read is, ms")
    replication_jitter_ms: float = Field(0.0, ge=0, description="± random spread of that lag per read, ms")
    read_your_writes_ms: float = Field(0.0, ge=0, description="after its own write, a client reads from the primary for this long (cookie), ms")
    purge_api: str | None = Field(None, description="purge API base URL: every product change sends it a product.updated event purge")
    purge_version_fence: bool = Field(True, description="send each product change's new version with its purge (a fence against lagging replicas)")
    purge_token: str | None = Field(None, description="bearer token for the purge API")
    seed: int | None = Field(None, description="seed of the fault and jitter random source (unset: unpredictable)")


class OriginSettings(FaultSettings, _ServerAndShop):
    """Everything `cdn origin` takes: server and shop first, then latency and faults (from `FaultSettings`)."""

    section = "origin"
