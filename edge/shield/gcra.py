"""GCRA, the generic cell rate algorithm: a rate limit kept as one timestamp per key. Pure: times in, answers out.

A key's state is its theoretical arrival time (TAT): when its bucket would be
full again. A request at `now` conforms when `max(TAT, now) + interval` is at
most `tolerance` ahead of `now`; then it moves the TAT there. With
interval = 1/rate and tolerance = burst × interval, `burst` requests pass at
once after a quiet period and `rate` per second after that, and no window of
length L ever holds more than burst + rate × L conforming requests. The same
arithmetic runs in Redis (`edge.shield.fleet`) for fleet-wide limits.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

# Float slack so that a request exactly on its emission time conforms.
EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Verdict:
    """One key's answer for one request; times are seconds from now."""

    allowed: bool
    remaining: int  # requests that would still pass at once after this one
    retry_after: float  # 0 when allowed; else when the next request would pass
    reset: float  # when the key is idle again (its bucket full)
    tat: float  # the key's theoretical arrival time after this request (unchanged when refused)


@dataclass(frozen=True, slots=True)
class Gcra:
    """`rate` requests per second sustained, `burst` at once after a quiet period."""

    rate: float
    burst: int
    interval: float = field(init=False)
    tolerance: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        object.__setattr__(self, "interval", 1.0 / self.rate)
        object.__setattr__(self, "tolerance", self.burst / self.rate)

    def check(self, tat: float | None, now: float) -> Verdict:
        """The verdict for one request at `now` on a key whose TAT is `tat` (None: idle)."""
        base = now if tat is None or tat < now else tat
        new_tat = base + self.interval
        wait = new_tat - self.tolerance - now
        if wait <= EPSILON:
            remaining = math.floor((self.tolerance - (new_tat - now)) / self.interval + 1e-6)
            return Verdict(True, max(remaining, 0), 0.0, new_tat - now, new_tat)
        return Verdict(False, 0, wait, base - now, base)


class LocalLimiter:
    """GCRA state of many keys in this process, bounded to `max_keys` (idle keys are forgotten first)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self.tats: dict[Hashable, float] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.tats)

    def peek(self, key: Hashable, gcra: Gcra, now: float) -> Verdict:
        """What `gcra` says about one more request on `key`, without counting it."""
        return gcra.check(self.tats.get(key), now)

    def commit(self, key: Hashable, verdict: Verdict, now: float) -> None:
        """Count an allowed request: store its new TAT."""
        self.tats[key] = verdict.tat
        if len(self.tats) > self.max_keys:
            self._prune(now)

    def check(self, key: Hashable, gcra: Gcra, now: float) -> Verdict:
        """Peek, and count the request when it is allowed."""
        verdict = gcra.check(self.tats.get(key), now)
        if verdict.allowed:
            self.commit(key, verdict, now)
        return verdict

    def refund(self, key: Hashable, gcra: Gcra) -> None:
        """Take back one counted request (it was refused further on)."""
        tat = self.tats.get(key)
        if tat is not None:
            self.tats[key] = tat - gcra.interval

    def _prune(self, now: float) -> None:
        # An idle key (TAT in the past) is the same as no key: dropping it changes no answer.
        self.tats = {k: t for k, t in self.tats.items() if t > now}
        if len(self.tats) > self.max_keys * 3 // 4:
            # Still mostly busy keys: forget the oldest-inserted down to half (they pass again: fail open),
            # so that the next prune is a quarter of `max_keys` inserts away.
            drop = len(self.tats) - self.max_keys // 2
            self.evictions += drop
            for k in list(self.tats)[:drop]:
                del self.tats[k]
