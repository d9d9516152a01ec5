"""The shield of one edge: bans, then rate limits counted locally and across the fleet.

Each decision goes, cheapest first:

1. the penalty box (a dict lookup, only while someone is banned);
2. the rules of the phase (receive: scope "all"; before an upstream fetch:
   scope "origin"): none matching is the common case, and then `admit`
   returns without awaiting anything;
3. the local GCRA of each counter, at the rule's own rate and burst: the
   request is refused at once, or goes on;
4. refusals Redis gave recently for these counters (no round trip); then
   the request is reserved in the local counters;
5. Redis, for fleet rules: one script call, shared with concurrent requests;
   a refusal there takes the local reservation back.

Why the local limit runs at the full fleet rate, not rate / N: the front door
sends a client to its nearest edge, so one client's traffic often lands on one
edge; a share of rate / N would refuse it long before the fleet limit. At the
full rate, and charged only with requests the fleet admitted, the local count
is a subset of the fleet's, so the local limit never refuses a request Redis
would have admitted (up to one emission interval while concurrent decisions
are in flight); it only saves round trips on floods, and is the limit of last
resort while Redis is away.

Error bound of a fleet-wide limit (rate r, burst b, N edges), over any window
of t seconds:
- Redis reachable: at most b + r·t admitted, exactly the configured limit,
  whatever N. Every admission is decided atomically in Redis on one clock;
  the local limit and the remembered refusals only ever refuse.
- Redis unreachable (`fleet_unavailable = "local"`, the default): each edge
  admits up to its local b + r·t, so the fleet at most N·(b + r·t); across
  the end of an outage at most (N + 1)·b + N·r·t, since Redis did not see
  what the edges admitted meanwhile. With "refuse" nothing is admitted
  under fleet rules while Redis is away: the bound stays b + r·t.
A decision that timed out may still have been counted by Redis: that errs
towards refusing, never towards admitting more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from redis.asyncio import Redis

from edge.shield import decision as answers
from edge.shield.address import ClientAddress
from edge.shield.decision import ADMITTED, Decision
from edge.shield.fleet import FleetCheck, FleetLimiter
from edge.shield.gcra import LocalLimiter, Verdict
from edge.shield.penalty import PenaltyBox
from edge.shield.rules import HeaderSource, RequestView, Rule, compile_rules
from edge.shield.settings import ShieldSettings
from edge.shield.sizes import SizeCheck

_OVER = {"reject": "rejected", "shed": "shed", "log": "logged"}


class Shield:
    """Size limits, client addresses, bans and rate limits for one edge; `admit` is the request path's call."""

    def __init__(self, settings: ShieldSettings | None = None, redis: str | Redis | None = None,
                 prefix: str = "cdn:", clock: Callable[[], float] = time.monotonic,
                 redis_clock: Callable[[], float] | None = None) -> None:
        self.settings = settings = settings or ShieldSettings()
        self.clock = clock
        self.prefix = prefix
        self.rules = compile_rules(settings.rules)
        active = self.rules if settings.enabled else ()
        self._receive_rules = tuple(r for r in active if r.scope == "all")
        self._origin_rules = tuple(r for r in active if r.scope == "origin")
        self.sizes = SizeCheck(settings.sizes)
        self.client_ip = ClientAddress(settings.trusted_proxies, settings.ipv6_prefix)
        self.local = LocalLimiter(settings.max_tracked_keys)
        self.penalty = PenaltyBox(settings.penalty, settings.max_tracked_keys)
        self.fleet: FleetLimiter | None = None
        if redis is not None and any(r.fleet for r in active):
            options: dict[str, Any] = dict(circuit_break=settings.circuit_break, clock=clock, server_clock=redis_clock,
                                           max_remembered=settings.max_tracked_keys)
            self.fleet = (FleetLimiter.from_url(redis, settings.redis_timeout, **options) if isinstance(redis, str)
                          else FleetLimiter(redis, timeout=settings.redis_timeout, owns_client=False, **options))
        self.outcomes: dict[str, dict[str, int]] = {r.name: {} for r in self.rules}
        self.counters = {"admitted": 0, "rejected": 0, "shed": 0, "banned": 0, "bans": 0,
                         "local_rejections": 0, "remembered_rejections": 0, "fleet_unavailable": 0}
        self.size_refusals: dict[int, int] = {}

    # -- the request path's calls ----------------------------------------------------------
    def check_size(self, scope: MutableMapping[str, Any]) -> tuple[int, str] | None:
        """(414 | 431 | 413, message) when the request is over a size limit, else None."""
        problem = self.sizes(scope)
        if problem is not None:
            self.size_refusals[problem[0]] = self.size_refusals.get(problem[0], 0) + 1
        return problem

    def within_sizes(self, scope: MutableMapping[str, Any]) -> bool:
        """Whether `check_size` would pass the request, without counting a refusal (its caller's to count)."""
        return self.sizes(scope) is None

    def admits_all_on_receive(self) -> bool:
        """Whether `admit` at receive would admit any request now: nobody is banned and no rule of scope
        "all" applies (the default: hits are not limited), so the caller may skip working out the client."""
        return not self.penalty.bans and not self._receive_rules

    async def admit(self, client: str | None, method: str, path: str, headers: HeaderSource = (),
                    origin_bound: bool = False) -> Decision:
        """May this request go on? At receive with origin_bound=False (bans, rules of scope "all"); again
        with origin_bound=True just before it goes upstream (rules of scope "origin").

        Awaits nothing unless a fleet rule applies (and Redis is reachable)."""
        if self.penalty.bans and client is not None:
            now = self.clock()
            remaining = self.penalty.banned_for(client, now)
            if remaining > 0:
                self.counters["banned"] += 1
                return answers.banned(client, remaining)
        rules = self._origin_rules if origin_bound else self._receive_rules
        if not rules:
            return ADMITTED
        request = RequestView(client, method, path, headers)
        matched = [(rule, key) for rule in rules if (key := rule.key_for(request)) is not None]
        if not matched:
            return ADMITTED
        return await self._decide(client, matched)

    # -- deciding ------------------------------------------------------------------------
    async def _decide(self, client: str | None, matched: list[tuple[Rule, tuple[str, ...]]]) -> Decision:
        now = self.clock()
        verdicts = [self.local.peek((rule.index, key), rule.gcra, now) for rule, key in matched]
        refusing = [(rule, v) for (rule, _), v in zip(matched, verdicts) if not v.allowed and rule.enforces]
        if refusing:
            self.counters["local_rejections"] += 1
            return self._refuse(client, refusing, now)

        fleet = self.fleet
        asked = [i for i, (rule, _) in enumerate(matched) if rule.fleet] if fleet is not None else []
        redis_keys = {i: matched[i][0].redis_key(self.prefix, matched[i][1]) for i in asked}
        for i in asked:
            rule = matched[i][0]
            if rule.enforces and fleet is not None and (known := fleet.known_refusal(redis_keys[i], now)):
                self.counters["remembered_rejections"] += 1
                return self._refuse(client, [(rule, known)], now)

        reserved = [i for i, verdict in enumerate(verdicts) if verdict.allowed]
        for i in reserved:
            rule, key = matched[i]
            self.local.commit((rule.index, key), verdicts[i], now)

        if fleet is not None and asked:
            checks = [FleetCheck(redis_keys[i], matched[i][0].gcra, matched[i][0].enforces) for i in asked]
            answer = await fleet.decide(checks)
            if answer is None:
                self.counters["fleet_unavailable"] += 1
                enforcing = [matched[i][0] for i in asked if matched[i][0].enforces]
                if self.settings.fleet_unavailable == "refuse" and enforcing:
                    self._refund(matched, reserved)
                    self.counters["shed"] += 1
                    return answers.fleet_unavailable(enforcing[0], max(fleet.unavailable_for(self.clock()), 1.0))
            else:
                for i, verdict in zip(asked, answer):
                    verdicts[i] = verdict
                refusing = [(rule, v) for (rule, _), v in zip(matched, verdicts) if not v.allowed and rule.enforces]
                if refusing:
                    self._refund(matched, reserved)
                    return self._refuse(client, refusing, self.clock())
                self._refund(matched, [i for i in reserved if not verdicts[i].allowed])  # log rules Redis found over

        self.counters["admitted"] += 1
        for (rule, _), verdict in zip(matched, verdicts):
            self._count(rule, "allowed" if verdict.allowed else _OVER[rule.action])
        if not self.settings.advertise:
            return ADMITTED
        return self._admitted_with_fields(matched, verdicts)

    def _refuse(self, client: str | None, refusing: Sequence[tuple[Rule, Verdict]], now: float) -> Decision:
        """The answer for a refused request: a client's own limit (429) before a budget (503)."""
        rejects = [(rule, v) for rule, v in refusing if rule.action == "reject"]
        rule, verdict = max(rejects or refusing, key=lambda rv: rv[1].retry_after)
        self._count(rule, _OVER[rule.action])
        if rule.action == "shed":
            self.counters["shed"] += 1
            return answers.over_budget(rule, verdict)
        self.counters["rejected"] += 1
        if client is not None and self.penalty.record_refusal(client, now):
            self.counters["bans"] += 1
        return answers.rate_limited(rule, verdict)

    def _refund(self, matched: list[tuple[Rule, tuple[str, ...]]], reserved: Sequence[int]) -> None:
        for i in reserved:
            rule, key = matched[i]
            self.local.refund((rule.index, key), rule.gcra)

    def _count(self, rule: Rule, outcome: str) -> None:
        counts = self.outcomes[rule.name]
        counts[outcome] = counts.get(outcome, 0) + 1

    def _admitted_with_fields(self, matched: list[tuple[Rule, tuple[str, ...]]], verdicts: list[Verdict]) -> Decision:
        limits = [(rule, v) for (rule, _), v in zip(matched, verdicts) if rule.action == "reject"]
        if not limits:
            return ADMITTED
        rule, verdict = min(limits, key=lambda rv: rv[1].remaining)
        return Decision(True, headers=answers.ratelimit_fields(rule, verdict), rule=rule.name)

    # -- looking inside ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Rules, decisions by rule and outcome, bans, and Redis use, as plain JSON-able data."""
        now = self.clock()
        fleet = self.fleet
        return {
            "enabled": self.settings.enabled,
            "rules": [rule.model_dump() for rule in self.settings.rules],
            "decisions": {name: dict(counts) for name, counts in self.outcomes.items()},
            "counters": dict(self.counters),
            "size_refusals": {str(status): n for status, n in sorted(self.size_refusals.items())},
            "bans": self.penalty.active(now),
            "local": {"tracked_keys": len(self.local), "evictions": self.local.evictions},
            "redis": None if fleet is None else {
                **fleet.stats,
                "circuit_open_for": round(fleet.unavailable_for(now), 3),
                "remembered": len(fleet.refusals),
                "last_error": fleet.last_error,
            },
        }

    async def close(self) -> None:
        """Stop talking to Redis."""
        if self.fleet is not None:
            await self.fleet.close()
