"""Settings of one edge node (`[edge]` in the config file, `CDN_EDGE_*` in the environment)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from balancer import MemberSettings, PoolSettings
from cdn.config import ServerSettings
from cdn.redis_url import RedisUrl
from edge.shield import ShieldSettings


class EdgeSettings(ServerSettings):
    section = "edge"

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on")
    origin: str = Field("http://127.0.0.1:9000", description="origin base URL; the edge forwards only there")
    id: str = Field("edge-1", min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="edge id, shown in Cache-Status")
    region: str = Field("local", description="region name")
    pool: PoolSettings | None = Field(None, description="origin pool: members, algorithm, health checks (unset: the single `origin`)")
    parents: list[MemberSettings] = Field(default_factory=list, description="parent edges (shield tier) that misses are fetched from, by consistent hashing")
    coalesce_timeout: float = Field(10.0, gt=0, description="seconds a request waits for another request's fetch of the same key before fetching itself")
    hit_for_miss_ttl: float = Field(10.0, ge=0, description="seconds a key whose response was not storable skips coalescing")
    stale_grace: float = Field(0.0, ge=0, description="serve stale up to this many seconds past freshness while no origin is available (0: off)")
    version_header: str = Field("x-content-version", description="response header carrying the content version that purge fences compare")
    fence_ttl: float = Field(300.0, gt=0, description="seconds a purge's version fence stays in force (at least the origin's replication lag)")
    fence_wait: float = Field(2.0, ge=0, description="seconds to keep refetching while the origin answers older than a fence (then 503)")
    latitude: float | None = Field(None, ge=-90, le=90, description="the edge's latitude (for the front door and reports)")
    longitude: float | None = Field(None, ge=-180, le=180, description="the edge's longitude")
    advertise_url: str | None = Field(None, description="URL other services reach this edge at (default: http://host:port)")
    redis: RedisUrl | None = Field(None, description="Redis URL of the purge log and edge registry, redis://host:port/db, or redis+sentinel://host:port[,host:port...]/service/db (unset: local purges only)")
    redis_prefix: str = Field("cdn:", description="prefix of every Redis key")
    heartbeat_interval: float = Field(1.0, gt=0, le=60, description="seconds between registry heartbeats")
    cache_size: int = Field(256 * 1024 * 1024, gt=0, description="cache capacity in bytes (bodies, headers and bookkeeping)")
    max_object_size: int = Field(16 * 1024 * 1024, gt=0, description="largest response body stored; larger ones stream through uncached")
    sendfile_bytes: int = Field(16 * 1024 * 1024, ge=0, description="bytes of hot bodies of sendfile_from bytes or more also held in in-memory files, which fast hits send with sendfile(2) instead of copying them; at most a sixteenth of cache_size (0: off)")
    sendfile_from: int = Field(512 * 1024, ge=1, description="the smallest body sent with sendfile(2) (see sendfile_bytes); below it, copying costs less on the machines measured")
    heuristic_fraction: float = Field(0.1, ge=0, le=1, description="heuristic freshness as a fraction of the time since Last-Modified")
    heuristic_max: float = Field(86400.0, ge=0, description="upper bound of heuristic freshness, seconds")
    connect_timeout: float = Field(3.0, gt=0, description="seconds to connect to the origin")
    origin_timeout: float = Field(30.0, gt=0, description="seconds to wait for the origin's response headers (then 504)")
    client_header_timeout: float = Field(15.0, gt=0, description="seconds a client has to send a whole request head (then 408 and the connection closed)")
    client_body_timeout: float = Field(60.0, gt=0, description="seconds a request body may pause while the edge reads it (then 408 and the connection closed)")
    shield: ShieldSettings = Field(default_factory=ShieldSettings, description="rate limits, penalty box and request size limits")
    cache_set_cookie: bool = Field(False, description="store and share responses that carry Set-Cookie (RFC 9111 allows it; off by default)")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names accepted (empty: any); others get 400")
    admin_token: str | None = Field(None, description="bearer token for /_edge/ admin endpoints (unset: admin disabled)")
    strip_surrogate_headers: bool = Field(True, description="remove CDN-Cache-Control, Surrogate-Control and tag headers before delivery")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("warning", description="server log level")
    access_log: bool = Field(True, description="one JSON line per request on stdout (logger cdn.access)")
    metrics: bool = Field(True, description="serve Prometheus metrics at GET /_edge/metrics, without a token")

    @field_validator("origin")
    @classmethod
    def _origin_is_http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1].strip("/")) == 0:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")
