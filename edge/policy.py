"""RFC 9111 as pure functions: what may be stored, for how long, and when a stored response may be reused.

No I/O and no clock: every function takes headers and times and returns an answer.
The edge is a shared cache; it also honours the targeted fields CDN-Cache-Control
(RFC 9213) and Surrogate-Control (Edge Architecture 1.0), which take precedence.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from edge.headers import (
    AGE_INVALID,
    EMPTY_DIRECTIVES,
    Directives,
    Headers,
    parse_age,
    parse_directives,
    parse_entity_tags,
    parse_http_date,
    parse_surrogate_control,
    parse_vary,
    single_date,
    split_list,
    weak_match,
)

# RFC 9110 §15: statuses this cache understands (for `must-understand`, RFC 9111 §5.2.2.3).
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308}
    | set(range(400, 418)) | {421, 422, 426, 500, 501, 502, 503, 504, 505}
)
# RFC 9110 §15.1: statuses cacheable by heuristic freshness.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

# RFC 9110 §7.6.1 hop-by-hop fields, plus the proxy-only ones; never stored or forwarded.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
     "proxy-authenticate", "proxy-authorization", "proxy-authentication-info"}
)
# RFC 9111 §3.2: fields a 304 must not change in the stored response (the suite adds the validators').
NOT_UPDATED_BY_304 = frozenset({"content-length", "content-encoding", "content-md5", "content-range", "etag"})
TARGETED_FIELDS = ("cdn-cache-control", "surrogate-control")
TAG_FIELDS = ("surrogate-key", "cache-tag")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The operator's choices the RFC leaves open."""

    device: str = "edge"  # our Surrogate-Control target token
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    cache_set_cookie: bool = False  # share responses that set cookies (RFC allows it; CDNs default to no)


def connection_listed(headers: Headers) -> frozenset[str]:
    """Field names a Connection header marks as hop-by-hop (RFC 9110 §7.6.1)."""
    return frozenset(n.lower() for n in split_list(headers.get_all("connection")))


def end_to_end(headers: Headers) -> Headers:
    """`headers` without hop-by-hop fields and those the Connection header names (itself when it has none)."""
    if HOP_BY_HOP.isdisjoint(headers.fields()):  # no Connection field either: nothing to drop
        return headers
    return headers.remove(HOP_BY_HOP | connection_listed(headers))


def governing_directives(headers: Headers, policy: CachePolicy) -> tuple[str, Directives]:
    """The directives this cache obeys: CDN-Cache-Control, else Surrogate-Control for us, else Cache-Control."""
    cdn = headers.get_all("cdn-cache-control")
    if cdn:
        directives = parse_directives(cdn)
        if directives:
            return "cdn-cache-control", directives
    surrogate = headers.get_all("surrogate-control")
    if surrogate:
        directives = parse_surrogate_control(surrogate, policy.device)
        if directives:
            return "surrogate-control", directives
    return "cache-control", parse_directives(headers.get_all("cache-control"))


def request_directives(headers: Headers) -> Directives:
    """Request Cache-Control; `Pragma: no-cache` counts as `no-cache` when Cache-Control is absent (RFC 9111 §5.4)."""
    lines = headers.get_all("cache-control")
    if lines:
        return parse_directives(lines)
    if any(p.strip().lower() == "no-cache" for line in headers.get_all("pragma") for p in line.split(",")):
        return Directives({"no-cache": None})
    return EMPTY_DIRECTIVES


def uncacheable_reason(
    method: str, status: int, request: Headers, response: Headers, policy: CachePolicy
) -> str | None:
    """Why a shared cache must not store this response (RFC 9111 §3), or None when it may."""
    if method != "GET":
        return "method"
    if status < 200 or status in (206, 304):
        return "status"
    source, d = governing_directives(response, policy)
    if status not in UNDERSTOOD_STATUSES and ("must-understand" in d or status >= 600):
        return "status"
    if "no-store" in d and not ("must-understand" in d and status in UNDERSTOOD_STATUSES):
        return "no-store"
    if "no-store" in request_directives(request):
        return "request-no-store"
    if "private" in d and not d.field_names("private"):
        return "private"
    if "authorization" in request and not ("public" in d or "s-maxage" in d or "must-revalidate" in d):
        return "authorization"  # RFC 9111 §3.5, whichever field the directives came from
    if "set-cookie" in response and not policy.cache_set_cookie:
        return "set-cookie"
    if parse_vary(response.get_all("vary")) is None:
        return "vary-star"
    explicit = ("max-age" in d or "s-maxage" in d or "public" in d or
                (source == "cache-control" and "expires" in response))
    if not explicit and status not in HEURISTIC_STATUSES:
        return "no-freshness"
    return None


@dataclass(frozen=True, slots=True)
class ReuseRules:
    """What a response's directives say of reusing it besides its lifetime. Few responses say anything
    here, and those that do say the same things: entries share one object per combination (`reuse_rules`)."""

    no_cache: bool = False  # always revalidate (§5.2.2.4)
    must_revalidate: bool = False  # no stale serving (§5.2.2.2, §5.2.2.8, s-maxage)
    stale_while_revalidate: float = 0.0  # RFC 5861
    stale_if_error: float = 0.0


NO_RULES = ReuseRules()


@dataclass(eq=False)
class FreshnessRules:
    """What the cache needs to know of a stored response to judge reuse, computed once at store time, and
    its age and time to live from it. The fields, without slots: the dataclasses that hold them make them
    (`Freshness`, and the stored entry, `edge.app.Stored`, which holds them itself)."""

    __slots__ = ()
    lifetime: float  # RFC 9111 §4.2.1
    initial_age: float  # corrected_initial_age, RFC 9111 §4.2.3
    response_time: float
    rules: ReuseRules = NO_RULES

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.response_time)

    def ttl(self, now: float) -> float:
        """Seconds of freshness left (negative when stale)."""
        return self.lifetime - self.age(now)


@dataclass(slots=True)
class Freshness(FreshnessRules):
    """The freshness of a response on its own."""


F = TypeVar("F", bound=FreshnessRules)


def _seconds(d: Directives, name: str) -> float:
    value = d.seconds(name)
    return float(value) if value and value > 0 else 0.0


def freshness_lifetime(status: int, headers: Headers, response_time: float, policy: CachePolicy) -> float:
    """Freshness lifetime (RFC 9111 §4.2.1, shared cache), targeted fields first (RFC 9213)."""
    source, d = governing_directives(headers, policy)
    for name in ("s-maxage", "max-age"):
        if name == "s-maxage" and source == "surrogate-control":
            continue
        if name in d:
            value = d.seconds(name)
            if value is None or value < 0 or name in d.duplicated:
                return 0.0  # invalid or conflicting: treat as stale (§4.2.1)
            return float(value)
    if source != "cache-control":
        return 0.0
    date = single_date(headers.get_all("date"))
    if date is None:
        date = response_time
    expires_lines = headers.get_all("expires")
    if expires_lines:
        expires = parse_http_date(expires_lines[0]) if len(expires_lines) == 1 else None
        return max(0.0, expires - date) if expires is not None else 0.0  # §5.3: invalid means past
    if status in HEURISTIC_STATUSES or "public" in d:
        last_modified = single_date(headers.get_all("last-modified"))
        if last_modified is not None and last_modified < date:
            return min(policy.heuristic_max, policy.heuristic_fraction * (date - last_modified))
    return 0.0


def initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    """corrected_initial_age of RFC 9111 §4.2.3; a malformed Age makes the response stale at once."""
    age_value = parse_age(headers.get_all("age"))
    if age_value == AGE_INVALID:
        return AGE_INVALID
    date = single_date(headers.get_all("date"))
    # Date has one-second resolution: compare it with the whole second the response arrived in,
    # or a response would start up to a second old.
    apparent_age = max(0.0, float(int(response_time)) - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


# Lifetimes repeat (3600.0 for every max-age=3600), and so do initial ages kept to the millisecond (0.001
# for most fetches from a near origin) and reuse rules: a stored entry holds one object each value is
# shared by, not one of its own (24 bytes a float). Up to SHARED_VALUES values of each kind are kept; a
# flood of distinct ones costs one rebuild per SHARED_VALUES.
SHARED_VALUES = 4096
V = TypeVar("V", float, ReuseRules)
_shared_floats: dict[float, float] = {}
_shared_rules: dict[ReuseRules, ReuseRules] = {}


def _one_of(kept: dict[V, V], value: V) -> V:
    found = kept.get(value)
    if found is None:
        if len(kept) >= SHARED_VALUES:
            kept.clear()
        kept[value] = found = value
    return found


def shared(value: float) -> float:
    """The one float object for `value` that entries holding it share."""
    return _one_of(_shared_floats, value)


def reuse_rules(d: Directives, source: str) -> ReuseRules:
    """The reuse rules of a response whose governing directives (from `source`) are `d`, shared."""
    found = ReuseRules(
        no_cache="no-cache" in d and not d.field_names("no-cache"),
        must_revalidate=("must-revalidate" in d or "proxy-revalidate" in d or
                         ("s-maxage" in d and source != "surrogate-control")),
        stale_while_revalidate=_seconds(d, "stale-while-revalidate"),
        stale_if_error=_seconds(d, "stale-if-error"),
    )
    return NO_RULES if found == NO_RULES else _one_of(_shared_rules, found)


def to_the_millisecond(age: float) -> float:
    """`age` rounded up to a whole millisecond: never younger than it is, and one of few values entries can
    share (with the response delay in full, each initial age would be a float of its own)."""
    if age == AGE_INVALID:
        return age
    ms = math.ceil(age * 1000)
    return (ms - 1) / 1000 if (ms - 1) / 1000 >= age else ms / 1000  # 2.007 * 1000 is 2007.0000000000002


def assess(status: int, headers: Headers, request_time: float, response_time: float, policy: CachePolicy,
           kind: Callable[..., F] = Freshness, /, **more: Any) -> F:
    """The Freshness of a response received at `response_time` for a request sent at `request_time`
    (as `kind`, a dataclass with FreshnessRules' fields, and the fields `more` gives it)."""
    source, d = governing_directives(headers, policy)
    return kind(
        lifetime=shared(freshness_lifetime(status, headers, response_time, policy)),
        initial_age=shared(to_the_millisecond(initial_age(headers, request_time, response_time))),
        response_time=response_time,
        rules=reuse_rules(d, source),
        **more,
    )


def stored_fields_to_drop(headers: Headers, policy: CachePolicy) -> frozenset[str]:
    """Fields a shared cache must not keep: hop-by-hop, `private="..."` and `no-cache="..."` ones (§5.2.2)."""
    _, d = governing_directives(headers, policy)
    return HOP_BY_HOP | connection_listed(headers) | d.field_names("private") | d.field_names("no-cache")


class Reuse(enum.Enum):
    FRESH = "fresh"  # serve it
    STALE_ALLOWED = "stale-allowed"  # stale, but the client accepts it (max-stale)
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"  # serve it, refresh in the background
    VALIDATE = "validate"  # ask the origin first (conditional request)


def reuse(freshness: FreshnessRules, request: Directives, now: float, soft_purged: bool = False) -> Reuse:
    """Whether a stored response may answer this request without the origin (RFC 9111 §4.2, §4.2.4, §5.2.1)."""
    if "no-cache" in request or freshness.rules.no_cache:
        return Reuse.VALIDATE
    age = freshness.age(now)
    max_age = request.seconds("max-age")
    if max_age is not None and max_age >= 0 and age > max_age:
        return Reuse.VALIDATE
    ttl = freshness.lifetime - age
    min_fresh = request.seconds("min-fresh")
    if min_fresh is not None and min_fresh >= 0 and ttl < min_fresh:
        return Reuse.VALIDATE
    if ttl > 0 and not soft_purged:
        return Reuse.FRESH
    if freshness.rules.must_revalidate:
        return Reuse.VALIDATE
    staleness = -ttl if ttl <= 0 else 0.0
    if "max-stale" in request:
        limit = request.seconds("max-stale")
        if request.get("max-stale") is None or (limit is not None and 0 <= staleness <= limit):
            return Reuse.STALE_ALLOWED
    window = freshness.rules.stale_while_revalidate
    if staleness <= window and window > 0:
        return Reuse.STALE_WHILE_REVALIDATE
    return Reuse.VALIDATE


def may_serve_stale_on_error(freshness: FreshnessRules, request: Directives, now: float) -> bool:
    """stale-if-error (RFC 5861 §4), from the response or the request, unless revalidation is mandatory."""
    if freshness.rules.must_revalidate or freshness.rules.no_cache:
        return False
    staleness = max(0.0, -freshness.ttl(now))
    window = max(freshness.rules.stale_if_error, _seconds(request, "stale-if-error"))
    return window > 0 and staleness <= window


def merge_304(stored: Headers, validation: Headers) -> Headers:
    """The stored headers freshened by a 304 (RFC 9111 §3.2, §4.3.4)."""
    updates = end_to_end(validation).remove(NOT_UPDATED_BY_304)
    # The stored Age described the first response; the validated one is as old as the 304 says.
    # Without a Date in the 304, the stored one (perhaps the one we added) is dropped too: the
    # caller dates the freshened response as received now (RFC 9110 §6.6.1).
    names = {k for k, _ in updates.items} | {"age", "date"}
    return Headers([(k, v) for k, v in stored.items if k not in names] + updates.items)


def validators(headers: Headers) -> list[tuple[str, str]]:
    """Conditional request fields to revalidate a stored response (RFC 9111 §4.3.1)."""
    out = []
    etag = headers.get("etag")
    if etag:
        out.append(("if-none-match", etag))
    last_modified = headers.get("last-modified")
    if last_modified:
        out.append(("if-modified-since", last_modified))
    return out


def not_modified(request: Headers, stored: Headers, response_time: float) -> bool:
    """Whether the client's own conditional request is satisfied by the stored response (RFC 9111 §4.3.2)."""
    inm = request.get_all("if-none-match")
    if inm:
        etag = stored.get("etag")
        tags = parse_entity_tags(", ".join(inm))
        if tags is None:
            return True
        return etag is not None and any(weak_match(t, etag) for t in tags)
    ims_lines = request.get_all("if-modified-since")
    if len(ims_lines) != 1:
        return False  # absent, or more than one: ignore it (RFC 9110 §13.1.3)
    ims = parse_http_date(ims_lines[0])
    if ims is None:
        return False
    modified = single_date(stored.get_all("last-modified"))
    if modified is None:
        modified = single_date(stored.get_all("date"))
    if modified is None:
        modified = response_time
    return modified <= ims


# RFC 9110 §15.4.5: fields a 304 carries from the stored response.
NOT_MODIFIED_FIELDS = frozenset({"cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified"})


def invalidates(method: str, status: int) -> bool:
    """A non-error response to an unsafe method invalidates the target (RFC 9111 §4.4)."""
    return method not in SAFE_METHODS and 200 <= status < 400
