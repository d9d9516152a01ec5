"""What the shield answers about one request, and the RateLimit fields it sends with a refusal.

RateLimit and RateLimit-Policy follow draft-ietf-httpapi-ratelimit-headers-11
(structured-field lists of sf-string policy names with parameters):

    RateLimit-Policy: "origin";q=40;w=2     quota q requests per window w seconds
    RateLimit: "origin";r=0;t=3             r requests left; t seconds of the effective window

A GCRA has no fixed window; it is advertised as its burst spread over the time
the burst takes to refill, w = ceil(burst / rate), with q = max(burst, rate × w)
(`rules.policy_item`). On a refusal t is the same instant as Retry-After, as
the draft asks; on an admitted request it is when the burst is whole again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge.shield.gcra import Verdict
from edge.shield.rules import Rule

Fields = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may go on; if not, the status, fields and message to answer with."""

    allowed: bool
    status: int = 200  # 429 rate limited or banned; 503 over budget (or the fleet unavailable, when set to refuse)
    headers: Fields = ()  # ready for ASGI: Retry-After, RateLimit, RateLimit-Policy
    rule: str | None = None  # the rule that decided, if any
    reason: str = "ok"  # ok | rate-limited | banned | over-budget | fleet-unavailable
    message: str = ""  # a one-line body for a refusal
    retry_after: float = 0.0  # seconds

    @property
    def shed(self) -> bool:
        """A 503 refusal: serve a stale copy instead when one exists, else this 503."""
        return self.status == 503


ADMITTED = Decision(True)


def delay_seconds(seconds: float) -> int:
    """Seconds as a Retry-After / `t` value: a whole number, at least 1 for any wait at all."""
    return max(1, math.ceil(seconds - 1e-9)) if seconds > 0 else 0


def limit_item(rule: Rule, verdict: Verdict) -> str:
    """The rule's current service limit as a RateLimit list member."""
    t = delay_seconds(verdict.retry_after if not verdict.allowed else verdict.reset)
    return f'"{rule.name}";r={verdict.remaining};t={t}'


def ratelimit_fields(rule: Rule, verdict: Verdict) -> Fields:
    """RateLimit-Policy and RateLimit for one rule's verdict."""
    return ((b"ratelimit-policy", rule.policy), (b"ratelimit", limit_item(rule, verdict).encode()))


def rate_limited(rule: Rule, verdict: Verdict) -> Decision:
    """429: the client went over `rule`."""
    wait = delay_seconds(verdict.retry_after)
    headers = ((b"retry-after", str(wait).encode()), *ratelimit_fields(rule, verdict))
    return Decision(False, 429, headers, rule.name, "rate-limited",
                    f"too many requests (rule {rule.name}): retry after {wait} s", verdict.retry_after)


def over_budget(rule: Rule, verdict: Verdict) -> Decision:
    """503 (or stale): the fleet's origin budget `rule` is spent. No RateLimit fields: they would reveal capacity."""
    wait = delay_seconds(verdict.retry_after)
    return Decision(False, 503, ((b"retry-after", str(wait).encode()),), rule.name, "over-budget",
                    f"origin busy (budget {rule.name}): retry after {wait} s", verdict.retry_after)


def banned(client: str, remaining: float) -> Decision:
    """429 for a client in the penalty box."""
    wait = delay_seconds(remaining)
    return Decision(False, 429, ((b"retry-after", str(wait).encode()),), None, "banned",
                    f"too many refused requests from {client}: banned for {wait} s", remaining)


def fleet_unavailable(rule: Rule, wait: float) -> Decision:
    """503 while Redis is unreachable, for an edge set to refuse fleet rules then."""
    seconds = delay_seconds(wait)
    return Decision(False, 503, ((b"retry-after", str(seconds).encode()),), rule.name, "fleet-unavailable",
                    f"rate limits unavailable (rule {rule.name}): retry after {seconds} s", wait)
