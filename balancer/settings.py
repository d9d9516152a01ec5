"""Settings of one pool of upstream servers, to embed in a service's settings (e.g. `pool: PoolSettings`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AlgorithmName = Literal[
    "round_robin", "weighted_round_robin", "least_connections", "least_response_time", "resource_based", "consistent_hash"
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemberSettings(_Section):
    """One server of the pool; a bare URL string is accepted too."""

    url: str = Field(..., description="base URL of the server (http:// or https://)")
    weight: int = Field(1, gt=0, le=1000, description="share of traffic relative to the other members")

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


class HealthCheckSettings(_Section):
    """Active checks: a GET to every member every `interval`."""

    enabled: bool = Field(True, description="probe members in the background (off: members are always healthy)")
    path: str = Field("/healthz", pattern=r"^/", description="path probed on each member")
    interval: float = Field(5.0, gt=0, description="seconds between the starts of two rounds of checks")
    timeout: float = Field(2.0, gt=0, description="seconds a check may take before it counts as failed")
    expected_status: int = Field(200, ge=100, le=599, description="status code of a passing check")
    rise: int = Field(2, ge=1, description="consecutive passes that make an unhealthy member healthy")
    fall: int = Field(3, ge=1, description="consecutive failures that make a healthy member unhealthy")
    initially_healthy: bool = Field(True, description="members take traffic before their first check passes")


class PassiveSettings(_Section):
    """Passive checks: members whose requests keep failing are ejected for a back-off period."""

    enabled: bool = Field(True, description="eject members on consecutive request failures")
    failures: int = Field(3, ge=1, description="consecutive failed requests that eject a member")
    backoff: float = Field(1.0, gt=0, description="seconds of the first ejection; each further one doubles it")
    max_backoff: float = Field(30.0, gt=0, description="longest ejection, seconds")
    eject_on_5xx: bool = Field(False, description="count 5xx responses as failures (not only connect, timeout, protocol)")

    @model_validator(mode="after")
    def _max_not_below_first(self) -> PassiveSettings:
        if self.max_backoff < self.backoff:
            raise ValueError("max_backoff must be at least backoff")
        return self


class PoolSettings(_Section):
    """The members of a pool, how requests are spread over them, and how their health is judged."""

    members: list[MemberSettings] = Field(..., min_length=1, description="the servers of the pool")
    algorithm: AlgorithmName = Field("round_robin", description="how a member is chosen for each request")
    health: HealthCheckSettings = Field(default_factory=HealthCheckSettings, description="active health checks")
    passive: PassiveSettings = Field(default_factory=PassiveSettings, description="passive checks (ejection)")

    @field_validator("members")
    @classmethod
    def _unique_urls(cls, members: list[MemberSettings]) -> list[MemberSettings]:
        urls = [m.url for m in members]
        duplicates = sorted({u for u in urls if urls.count(u) > 1})
        if duplicates:
            raise ValueError(f"member URLs must be unique: {', '.join(duplicates)}")
        return members
