"""Settings of the front door (`[router]` in the config file, `CDN_ROUTER_*` in the environment)."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from balancer.geo import REGIONS, valid_coordinates
from balancer.placement import normalise_region
from cdn.config import ServerSettings
from cdn.redis_url import RedisUrl


class FrontEdge(BaseModel):
    """One edge behind the front door; a bare URL string is accepted too (region `local`, no coordinates)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(..., description="base URL of the edge")
    id: str = Field("", description="the edge's id, shown in X-Routed-To (default: host:port of the URL)")
    region: str = Field("local", min_length=1, max_length=64, description="region the edge serves")
    latitude: float | None = Field(None, ge=-90, le=90, description="where the edge is (default: its region's location)")
    longitude: float | None = Field(None, ge=-180, le=180, description="where the edge is")
    weight: int = Field(1, gt=0, le=1000, description="share of its region's keys relative to the region's other edges")

    @model_validator(mode="before")
    @classmethod
    def _bare_url(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or not value.split("://", 1)[1].strip("/"):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("region")
    @classmethod
    def _normalised_region(cls, value: str) -> str:
        return normalise_region(value)

    @model_validator(mode="after")
    def _defaults(self) -> FrontEdge:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("give both latitude and longitude, or neither")
        if not self.id:
            object.__setattr__(self, "id", self.url.split("://", 1)[1].split("/", 1)[0])
        return self


class RouterSettings(ServerSettings):
    section = "router"

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    id: str = Field("router", min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="the front door's name in Via")
    edges: list[FrontEdge] = Field(default_factory=list,
                                   description='edges: [{"url": ..., "id": ..., "region": ..., "latitude": ..., "longitude": ..., "weight": 1}]')
    regions: dict[str, tuple[float, float]] = Field(default_factory=dict,
                                                    description="region name -> [latitude, longitude], added to (or overriding) the built-in table: "
                                                                + ", ".join(REGIONS))
    cidr_regions: dict[str, str] = Field(default_factory=dict, description='client address block -> region, e.g. {"10.1.0.0/16": "eu-west"}')
    default_region: str | None = Field(None, description="region of clients no header or address block places (unset: any region)")
    redis: RedisUrl | None = Field(None, description="Redis URL of the edge registry, redis://host:port/db, or redis+sentinel://host:port[,host:port...]/service/db: live edges are added to `edges` (unset: `edges` only)")
    redis_prefix: str = Field("cdn:", description="prefix of every Redis key")
    live_after: float = Field(5.0, gt=0, description="a registered edge is used while its last heartbeat is younger than this (seconds)")
    registry_interval: float = Field(1.0, gt=0, le=60, description="seconds between two reads of the edge registry")
    health_interval: float = Field(1.0, gt=0, description="seconds between health checks of each edge (GET /_edge/health)")
    health_timeout: float = Field(1.0, gt=0, description="seconds a health check may take before it fails")
    health_rise: int = Field(2, ge=1, description="consecutive passing checks that bring an edge back")
    health_fall: int = Field(2, ge=1, description="consecutive failing checks that take an edge out")
    connect_timeout: float = Field(1.0, gt=0, description="seconds to connect to an edge (then the next edge is tried)")
    response_timeout: float = Field(35.0, gt=0, description="seconds to wait for an edge's response headers (then 504)")
    attempts: int = Field(3, ge=1, le=10, description="most edges tried for an idempotent request whose connection fails")
    hop_overhead_ms: float = Field(1.0, ge=0, description="latency model: milliseconds added per network hop to the distance's round trip")
    admin_token: str | None = Field(None, description="bearer token for GET /_router/edges (unset: disabled)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("warning", description="server log level")

    @field_validator("edges")
    @classmethod
    def _unique_edges(cls, edges: list[FrontEdge]) -> list[FrontEdge]:
        for attribute in ("url", "id"):
            values = [getattr(e, attribute) for e in edges]
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"edge {attribute}s must be unique: {', '.join(duplicates)}")
        return edges

    @field_validator("regions")
    @classmethod
    def _regions_on_earth(cls, regions: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (latitude, longitude) in regions.items():
            if not valid_coordinates(latitude, longitude):
                raise ValueError(f"region {name!r}: latitude must be within ±90 and longitude within ±180")
        return {normalise_region(name): location for name, location in regions.items()}

    @field_validator("cidr_regions")
    @classmethod
    def _blocks_parse(cls, blocks: dict[str, str]) -> dict[str, str]:
        for cidr in blocks:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not an address block: {exc}") from None
        return {cidr: normalise_region(region) for cidr, region in blocks.items()}

    @field_validator("default_region")
    @classmethod
    def _normalised_default(cls, value: str | None) -> str | None:
        return None if value is None else normalise_region(value)
