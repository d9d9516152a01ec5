"""How a member is chosen among the available ones: one class per algorithm, pure, with an injected random source."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from balancer.member import Member
from balancer.ring import HashRing
from balancer.settings import AlgorithmName

MAX_UTILISATION = 0.95  # a member reporting full load still looks like a finite queue (19 requests)


class Algorithm:
    """Chooses one of `candidates` (never empty, all available, in pool order)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, candidates: Sequence[Member], key: str | None) -> Member:
        """The member for this request."""
        raise NotImplementedError

    def members_changed(self, members: Sequence[Member]) -> None:
        """The pool's member set changed (a member was added, removed or re-weighted)."""

    def _weighted_choice(self, candidates: Sequence[Member]) -> Member:
        return self.rng.choices(candidates, weights=[m.weight for m in candidates])[0]

    def _cheapest(self, candidates: Sequence[Member], cost: Callable[[Member], float]) -> Member:
        # Ties (common when the pool is idle) are split by weight, so weights count at low load too.
        costs = [cost(m) for m in candidates]
        lowest = min(costs)
        return self._weighted_choice([m for m, c in zip(candidates, costs) if c == lowest])


class RoundRobin(Algorithm):
    """Each available member in turn; weights are ignored (see `WeightedRoundRobin`)."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.turn = 0

    def choose(self, candidates: Sequence[Member], key: str | None) -> Member:
        member = candidates[self.turn % len(candidates)]
        self.turn += 1
        return member


class WeightedRoundRobin(Algorithm):
    """nginx's smooth weighted round robin: shares follow weights, and heavy members are interleaved with light ones."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.current: dict[str, int] = {}

    def choose(self, candidates: Sequence[Member], key: str | None) -> Member:
        best = candidates[0]
        for member in candidates:
            self.current[member.url] = self.current.get(member.url, 0) + member.weight
            if self.current[member.url] > self.current[best.url]:
                best = member
        self.current[best.url] -= sum(m.weight for m in candidates)
        return best

    def members_changed(self, members: Sequence[Member]) -> None:
        self.current = {}


class LeastConnections(Algorithm):
    """The member with the fewest requests in flight per unit of weight."""

    def choose(self, candidates: Sequence[Member], key: str | None) -> Member:
        return self._cheapest(candidates, lambda m: m.in_flight / m.weight)


class LeastResponseTime(Algorithm):
    """The member with the lowest expected wait: response time EWMA × (requests in flight + 1), per unit of weight."""

    def choose(self, candidates: Sequence[Member], key: str | None) -> Member:
        # A member without samples is taken as average, so it is tried without being flooded before it answers.
        known = [m.response_time for m in candidates if m.response_time is not None]
        prior = sum(known) / len(known) if known else 0.0
        # Scaling by in-flight requests keeps a fast member from taking every request until its average catches up.
        return self._cheapest(candidates, lambda m: (prior if m.response_time is None else m.response_time)
                              * (m.in_flight + 1) / m.weight)


class ResourceBased(Algorithm):
    """The least loaded member by its own report: requests in flight, or the queue its reported load implies."""

    def choose(self, candidates: Sequence[Member], key: str | None) -> Member:
        return self._cheapest(candidates, self.cost)

    @staticmethod
    def cost(member: Member) -> float:
        """Requests queued at the member per unit of weight: ours now, plus others' as last reported."""
        utilisation = min(member.report.utilisation, MAX_UTILISATION) if member.report else 0.0
        # A busy fraction ρ is read as the queue it implies in M/M/1, ρ / (1 - ρ) requests (0.5 → 1, 0.9 → 9);
        # when the member also counted its requests, the larger says more.
        queued = max(member.others_in_flight, utilisation / (1 - utilisation))
        return (member.in_flight + queued) / member.weight


class ConsistentHash(Algorithm):
    """The key's member on a hash ring (weights as virtual node counts); requests without a key go by weight."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.ring = HashRing({})

    def choose(self, candidates: Sequence[Member], key: str | None) -> Member:
        if key is None:
            return self._weighted_choice(candidates)
        by_url = {m.url: m for m in candidates}
        url = self.ring.lookup(key, by_url.__contains__)
        # A candidate missing from the ring means members_changed was not called; fall back rather than fail.
        return by_url[url] if url is not None else self._weighted_choice(candidates)

    def members_changed(self, members: Sequence[Member]) -> None:
        self.ring = HashRing({m.url: m.weight for m in members})


ALGORITHMS: dict[AlgorithmName, type[Algorithm]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": WeightedRoundRobin,
    "least_connections": LeastConnections,
    "least_response_time": LeastResponseTime,
    "resource_based": ResourceBased,
    "consistent_hash": ConsistentHash,
}
