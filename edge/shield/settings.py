"""Settings of the shield (`[edge.shield]`): rate-limit rules, trusted proxies, the penalty box and size limits."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = r"^[A-Za-z0-9._-]+$"  # a rule name goes into RateLimit fields as an sf-string: keep it plain
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+\Z")  # RFC 9110 token, lowercase


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleSettings(_Section):
    """One rate limit: which requests it counts, what it counts them by, how many it allows, and what then."""

    name: str = Field(..., pattern=_NAME, description="rule name: the policy name in RateLimit fields, snapshots and Redis keys")
    key: list[str] = Field(["ip"], description='what requests are counted by: parts among "ip", "method", "path", '
                           '"header:NAME"; [] is one counter for all matching requests (a budget)')
    paths: list[str] = Field(default_factory=list, description="path prefixes the rule applies to (empty: every path)")
    methods: list[str] = Field(default_factory=list, description="methods the rule applies to (empty: every method)")
    scope: Literal["all", "origin"] = Field("origin", description="all: every request; origin: only requests that "
                                            "would reach the origin (misses, revalidations, passes)")
    rate: float = Field(..., gt=0, le=1_000_000, description="requests per second allowed, sustained")
    burst: int = Field(..., ge=1, le=1_000_000, description="requests allowed at once after a quiet period")
    action: Literal["reject", "log", "shed"] = Field("reject", description="past the limit: reject (429), log (count "
                                                     "only), or shed (serve stale if possible, else 503: a budget)")
    fleet: bool = Field(True, description="count across the fleet in Redis when the edge has one (off: per edge)")

    @field_validator("key")
    @classmethod
    def _known_parts(cls, parts: list[str]) -> list[str]:
        normalised = []
        for part in parts:
            part = part.strip().lower()
            if part.startswith("header:"):
                if not _HEADER_NAME.match(part[len("header:"):]):
                    raise ValueError(f"{part!r}: the header name is not a valid field name")
            elif part not in ("ip", "method", "path"):
                raise ValueError(f'{part!r}: a key part is "ip", "method", "path" or "header:NAME"')
            normalised.append(part)
        if len(set(normalised)) != len(normalised):
            raise ValueError("key parts must not repeat")
        return normalised

    @field_validator("paths")
    @classmethod
    def _prefixes_are_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path.startswith("/"):
                raise ValueError(f"{path!r}: a path prefix starts with /")
        return paths

    @field_validator("methods")
    @classmethod
    def _methods_upper(cls, methods: list[str]) -> list[str]:
        return [m.strip().upper() for m in methods]


class PenaltySettings(_Section):
    """The penalty box: a client refused too often is banned, and refused before any other work."""

    enabled: bool = Field(True, description="ban clients that keep being refused")
    violations: int = Field(50, ge=1, description="refusals (429) a client may collect within `window` before a ban")
    window: float = Field(10.0, gt=0, description="seconds over which refusals are counted")
    ban: float = Field(60.0, gt=0, description="seconds a ban lasts")


class SizeLimits(_Section):
    """Request size limits, checked before anything else reads the request."""

    max_url_length: int = Field(8192, ge=16, description="longest request target (path and query) in bytes; longer gets 414")
    max_header_count: int = Field(100, ge=1, description="most request header lines; more gets 431")
    max_header_bytes: int = Field(32 * 1024, ge=256, description="largest total of request header names and values in bytes; larger gets 431")
    max_body: int = Field(10 * 1024 * 1024, ge=0, description="largest declared Content-Length in bytes; larger gets 413")


def _default_rules() -> list[RuleSettings]:
    # Origin-bound requests cost the origin; hits cost only the edge, so by default only the former are limited.
    return [RuleSettings(name="origin", key=["ip"], scope="origin", rate=20, burst=40, action="reject")]


class ShieldSettings(_Section):
    """The shield of one edge: rate limits (local and fleet-wide), bans, client addresses, size limits."""

    enabled: bool = Field(True, description="apply the rules and bans (size limits are checked regardless)")
    rules: list[RuleSettings] = Field(default_factory=_default_rules, description="rate-limit rules (default: each "
                                      "client 20 origin-bound requests/s, burst 40; [] removes every rule)")
    trusted_proxies: list[str] = Field(default_factory=list, description="CIDR ranges of proxies whose "
                                       "X-Forwarded-For is believed (empty: the socket's address is the client)")
    ipv6_prefix: int = Field(64, ge=32, le=128, description="IPv6 clients are counted per prefix of this length "
                             "(64: one subscriber's network; 128: per address)")
    redis_timeout: float = Field(0.05, gt=0, le=5, description="seconds a decision waits for Redis before the fallback")
    circuit_break: float = Field(2.0, ge=0, description="seconds Redis is not tried after it failed or timed out")
    fleet_unavailable: Literal["local", "refuse"] = Field("local", description="while Redis is unreachable, fleet "
                                                          "rules: local (each edge's own limit decides) or refuse (503)")
    advertise: bool = Field(False, description="send RateLimit and RateLimit-Policy on allowed responses too (always on 429)")
    max_tracked_keys: int = Field(100_000, ge=100, description="rate-limit keys kept in memory per edge; idle ones go first")
    penalty: PenaltySettings = Field(default_factory=PenaltySettings, description="the penalty box")
    sizes: SizeLimits = Field(default_factory=SizeLimits, description="request size limits")

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, ranges: list[str]) -> list[str]:
        for cidr in ranges:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR range") from None
        return [c.strip() for c in ranges]

    @model_validator(mode="after")
    def _unique_rule_names(self) -> ShieldSettings:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {', '.join(duplicates)}")
        return self
