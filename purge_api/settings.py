"""Settings of the purge service (`[purge-api]` in the config file, `CDN_PURGE_API_*` in the environment)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cdn.config import ServerSettings
from cdn.redis_url import RedisUrl

# A product change purges that product and the list pages, not every product ("products").
DEFAULT_EVENTS = {
    "product.updated": ["product-{id}", "product-lists"],
    "product.deleted": ["product-{id}", "product-lists"],
    "catalog.reloaded": ["products", "product-lists"],
}


class PurgeApiSettings(ServerSettings):
    section = "purge-api"

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8090, ge=0, le=65535, description="port to listen on")
    redis: RedisUrl | None = Field(None, description="Redis URL of the purge log, redis://host:port/db, or redis+sentinel://host:port[,host:port...]/service/db (unset: in-process log, single process only)")
    redis_prefix: str = Field("cdn:", description="prefix of every Redis key")
    token: str | None = Field(None, description="bearer token allowed to purge and read (unset: the API refuses every call)")
    read_tokens: list[str] = Field(default_factory=list, description="bearer tokens that may read purge status but not purge")
    events: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_EVENTS),
                                         description="event name -> tag templates, e.g. {\"product.updated\": [\"product-{id}\"]}")
    event_fences: dict[str, list[str]] = Field(default_factory=dict,
                                               description="event name -> the tag templates a purge's version fences (default: the event's first template); a version only compares within one object")
    max_values: int = Field(256, ge=1, le=10_000, description="most URLs, prefixes or tags in one purge")
    max_body: int = Field(64 * 1024, ge=1024, description="largest request body in bytes (413 beyond)")
    live_after: float = Field(5.0, gt=0, description="an edge is live while its last heartbeat is younger than this (seconds)")
    max_wait: float = Field(30.0, gt=0, description="longest a caller may wait for acknowledgements (seconds)")
    log_maxlen: int = Field(100_000, ge=100, description="purge log length kept (an edge further behind empties its cache)")
    status_ttl: int = Field(3600, gt=0, description="seconds a purge's acknowledgements and id index are kept (beyond that: 404)")
    replicas: int = Field(0, ge=0, description="Redis replicas that must hold a purge before it is acknowledged (WAIT; 0: the master alone)")
    replica_timeout: float = Field(0.5, gt=0, description="seconds to wait for `replicas` to confirm a purge (then 503: retry with the same Idempotency-Key)")
    idempotency_ttl: int = Field(86400, gt=0, description="seconds an Idempotency-Key is remembered")
    repurge_delay: float = Field(0.0, ge=0, description="repeat every purge after this many seconds (0: off), for origins with lagging replicas")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("warning", description="server log level")

    @field_validator("events")
    @classmethod
    def _templates_are_formattable(cls, events: dict[str, list[str]]) -> dict[str, list[str]]:
        import string

        for name, templates in events.items():
            if not templates:
                raise ValueError(f"event {name!r} maps to no tags")
            for template in templates:
                try:
                    list(string.Formatter().parse(template))
                except ValueError as exc:
                    raise ValueError(f"event {name!r}: bad template {template!r}: {exc}") from None
        return events
