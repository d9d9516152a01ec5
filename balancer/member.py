"""A pool member and the pure state machines that judge it: active health, passive ejection, reported load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from balancer.settings import PassiveSettings


@dataclass(slots=True)
class HealthState:
    """Active health with hysteresis: `rise` passes in a row to come up, `fall` failures in a row to go down."""

    rise: int
    fall: int
    healthy: bool = True
    passes: int = 0
    failures: int = 0
    last_error: str | None = None

    def observe(self, passed: bool, error: str | None = None) -> None:
        """Count one check result and move between healthy and unhealthy when a threshold is reached."""
        if passed:
            self.passes, self.failures, self.last_error = self.passes + 1, 0, None
            if self.passes >= self.rise:
                self.healthy = True
        else:
            self.passes, self.failures, self.last_error = 0, self.failures + 1, error
            if self.failures >= self.fall:
                self.healthy = False


@dataclass(slots=True)
class Ejection:
    """Passive checks: consecutive request failures eject the member for a back-off that doubles until a success."""

    settings: PassiveSettings
    failures: int = 0
    backoff: float = 0.0  # length of the last ejection; 0 while the member has not been ejected since a success
    until: float = 0.0

    def ejected(self, now: float) -> bool:
        """Whether the member sits out at time `now`."""
        return now < self.until

    def failure(self, now: float) -> None:
        """Count a failed request; eject once there are `failures` in a row."""
        if not self.settings.enabled or self.ejected(now):
            return  # requests that were in flight when it was ejected say nothing new
        self.failures += 1
        # The count is not reset by an ejection: a member back from one is on probation, and its
        # next failure ejects it again for twice as long.
        if self.failures >= self.settings.failures:
            self.backoff = min(2 * self.backoff, self.settings.max_backoff) if self.backoff else self.settings.backoff
            self.until = now + self.backoff

    def success(self) -> None:
        """A request succeeded: forget past failures and back-off."""
        self.failures, self.backoff, self.until = 0, 0.0, 0.0

    def lift(self) -> None:
        """End the current ejection early (an active check passed); probation stays."""
        self.until = 0.0


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a member said about its own load in its last health check answer."""

    in_flight: int = 0
    load: float | None = None  # 0..1, the member's own idea of how busy it is
    cpu: float | None = None  # 0..1

    @property
    def utilisation(self) -> float:
        """Busy fraction 0..1: the higher of `load` and `cpu`, 0 when neither was reported."""
        return max((v for v in (self.load, self.cpu) if v is not None), default=0.0)

    @classmethod
    def parse(cls, body: bytes) -> LoadReport | None:
        """Read `{"in_flight": N, "load": 0.3, "cpu": 0.5}` (all optional); None when the body says nothing of load."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or not {"in_flight", "load", "cpu"} & data.keys():
            return None
        in_flight = data.get("in_flight")
        return cls(
            in_flight=in_flight if isinstance(in_flight, int) and not isinstance(in_flight, bool) and in_flight > 0 else 0,
            load=_fraction(data.get("load")),
            cpu=_fraction(data.get("cpu"), percent_above_one=True),
        )


def _fraction(value: Any, percent_above_one: bool = False) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        return None
    if percent_above_one and value > 1:  # CPU is often reported in percent
        value /= 100
    return min(max(float(value), 0.0), 1.0)


@dataclass(eq=False, slots=True)
class Member:
    """One server of a pool with everything the balancer knows about it."""

    url: str
    weight: int
    health: HealthState
    ejection: Ejection
    in_flight: int = 0  # our requests to it that have not finished
    response_time: float | None = None  # EWMA of seconds to response headers; None before the first sample
    report: LoadReport | None = None
    others_in_flight: int = 0  # requests it reported beyond ours, as of its last report
    picks: int = 0
    last_failure: str | None = None

    def available(self, now: float) -> bool:
        """Healthy and not ejected: it may be picked."""
        return self.health.healthy and not self.ejection.ejected(now)
