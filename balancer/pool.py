"""A pool of servers that answer the same requests: pick one, track each attempt, watch their health."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from types import TracebackType
from typing import Any

import httpx

from balancer.algorithms import ALGORITHMS
from balancer.health import HealthChecker
from balancer.member import Ejection, HealthState, LoadReport, Member
from balancer.settings import MemberSettings, PoolSettings

RESPONSE_TIME_SMOOTHING = 0.3  # weight of the newest sample in the response time EWMA


class Failure(StrEnum):
    """Why a request to a member gave no usable response."""

    CONNECT = "connect"  # refused, unreachable, or no connection in time
    TIMEOUT = "timeout"  # connected, but no response in time
    PROTOCOL = "protocol"  # reset, closed early, or not valid HTTP
    STATUS_5XX = "status5xx"  # answered with a server error (a failure only if the pool counts 5xx)


def failure_of(exc: BaseException) -> Failure | None:
    """The failure kind of an exception raised while talking to a member; None if it is not the member's doing."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | ConnectionRefusedError):
        return Failure.CONNECT
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return Failure.TIMEOUT
    if isinstance(exc, httpx.TransportError | httpx.DecodingError | OSError):
        return Failure.PROTOCOL
    return None  # e.g. cancellation: the client went away


class Attempt:
    """One request to a member, in flight from `pool.attempt(member)` until `close()` or the end of its `with` block."""

    def __init__(self, pool: OriginPool, member: Member) -> None:
        self.pool = pool
        self.member = member
        self.outcome: Failure | str | None = None  # "ok" or the failure, once known
        self._started = pool.clock()
        self._open = True
        member.in_flight += 1

    def responded(self, status: int) -> None:
        """Response headers arrived: record the response time; a 5xx counts as a failure if the pool says so."""
        self._settle(Failure.STATUS_5XX if status >= 500 else None)

    def failed(self, kind: Failure) -> None:
        """No usable response: count a failure of this kind against the member."""
        self._settle(kind)

    def close(self) -> None:
        """The request is over (body read or abandoned); it no longer counts as in flight."""
        if self._open:
            self._open = False
            self.member.in_flight -= 1

    def _settle(self, failure: Failure | None) -> None:
        if self.outcome is None:
            self.outcome = failure or "ok"
            self.pool._record(self.member, failure, self.pool.clock() - self._started)

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """A block that ends normally is a success unless told otherwise; one that raises is classified."""
        if exc is None:
            self._settle(None)
        elif (failure := failure_of(exc)) is not None:
            self._settle(failure)
        self.close()


class OriginPool:
    """Servers that can answer the same requests (an edge's origins, the front door's edges), and how to choose one."""

    def __init__(
        self,
        settings: PoolSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.algorithm = ALGORITHMS[settings.algorithm](rng or random.Random())
        self.members: list[Member] = []
        self.set_members(settings.members)
        self.checker = HealthChecker(self, settings.health, client) if settings.health.enabled else None

    def set_members(self, members: Sequence[MemberSettings]) -> None:
        """Make the pool exactly `members`, keeping what is known about the ones it already had."""
        known = {m.url: m for m in self.members}
        self.members = []
        for spec in members:
            member = known.get(spec.url) or self._new_member(spec)
            member.weight = spec.weight
            self.members.append(member)
        self.algorithm.members_changed(self.members)

    def _new_member(self, spec: MemberSettings) -> Member:
        health = self.settings.health
        healthy = health.initially_healthy or not health.enabled  # without checks nothing could bring it up
        return Member(spec.url, spec.weight, HealthState(health.rise, health.fall, healthy), Ejection(self.settings.passive))

    def pick(self, key: str | None = None, exclude: frozenset[str] = frozenset()) -> Member | None:
        """A healthy, non-ejected member not in `exclude` (URLs), chosen by the pool's algorithm; None if there is none."""
        now = self.clock()
        candidates = [m for m in self.members if m.url not in exclude and m.available(now)]
        if not candidates:
            return None
        member = self.algorithm.choose(candidates, key)
        member.picks += 1
        return member

    def attempt(self, member: Member) -> Attempt:
        """Start tracking a request to `member`: settle it with `responded`/`failed`, end it with `close` (or `with`)."""
        return Attempt(self, member)

    def _record(self, member: Member, failure: Failure | None, elapsed: float) -> None:
        if failure is Failure.STATUS_5XX and not self.settings.passive.eject_on_5xx:
            failure = None
        if failure in (None, Failure.STATUS_5XX, Failure.TIMEOUT):
            # The member answered, or took at least this long; a refused connection says nothing about its speed.
            previous = member.response_time
            member.response_time = elapsed if previous is None else (
                RESPONSE_TIME_SMOOTHING * elapsed + (1 - RESPONSE_TIME_SMOOTHING) * previous)
        if failure is None:
            member.ejection.success()
        else:
            member.last_failure = failure.value
            member.ejection.failure(self.clock())

    def record_check(self, member: Member, passed: bool, report: LoadReport | None = None, error: str | None = None) -> None:
        """Count one active health check result and the load the member reported in it."""
        member.health.observe(passed, error)
        if report is not None:
            member.report = report
            # Its count includes our requests; ours are known live, so keep only the others'.
            member.others_in_flight = max(0, report.in_flight - member.in_flight)
        if passed:
            member.ejection.lift()

    def snapshot(self) -> dict[str, Any]:
        """The pool's state as JSON-able data, for an admin endpoint."""
        now = self.clock()
        return {
            "algorithm": self.settings.algorithm,
            "available": sum(m.available(now) for m in self.members),
            "members": [_member_snapshot(m, now) for m in self.members],
        }

    async def start(self) -> None:
        """Start the background health checks (if enabled); the first round begins at once."""
        if self.checker is not None:
            self.checker.start()

    async def stop(self) -> None:
        """Stop the health checks and close their connections."""
        if self.checker is not None:
            await self.checker.stop()

    async def __aenter__(self) -> OriginPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _member_snapshot(member: Member, now: float) -> dict[str, Any]:
    report = member.report
    return {
        "url": member.url,
        "weight": member.weight,
        "available": member.available(now),
        "healthy": member.health.healthy,
        "check_passes": member.health.passes,
        "check_failures": member.health.failures,
        "last_check_error": member.health.last_error,
        "ejected_for": round(max(0.0, member.ejection.until - now), 3),
        "request_failures": member.ejection.failures,
        "backoff": member.ejection.backoff,
        "last_failure": member.last_failure,
        "in_flight": member.in_flight,
        "response_time": None if member.response_time is None else round(member.response_time, 6),
        "reported": None if report is None else {"in_flight": report.in_flight, "load": report.load, "cpu": report.cpu},
        "picks": member.picks,
    }
