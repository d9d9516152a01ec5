"""The front door's edges, grouped by region: where each region is, and which edge answers a key.

Each region's edges form one `OriginPool` with consistent hashing on the cache
key (so a region's edges split its cache between them) and active health
checks on `/_edge/health`. A client gets the nearest region that has an
available edge, then the key's edge within it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from balancer.geo import Coordinates, by_distance
from balancer.member import Member
from balancer.placement import Placement
from balancer.pool import OriginPool
from balancer.router_settings import FrontEdge
from balancer.settings import HealthCheckSettings, MemberSettings, PassiveSettings, PoolSettings

EDGE_HEALTH_PATH = "/_edge/health"
RANKING_CACHE_SIZE = 10_000  # client locations whose region order is remembered


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: the edge, its pool member (for attempt tracking), its region and distance."""

    edge: FrontEdge
    member: Member
    pool: OriginPool
    region: str
    distance_km: float | None  # None when the client or the region has no known location


class EdgeFleet:
    """Every edge the front door may use, one pool per region, and the regions' locations."""

    def __init__(self, health: HealthCheckSettings, regions: Mapping[str, Coordinates],
                 passive: PassiveSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.health = health
        self.passive = passive or PassiveSettings()
        self.table = dict(regions)  # region name -> location, before edges say otherwise
        self.clock = clock
        self.edges: dict[str, FrontEdge] = {}  # by URL
        self.pools: dict[str, OriginPool] = {}  # by region
        self.locations: dict[str, Coordinates] = dict(self.table)  # every region a client may be placed in
        self.started = False
        self._current: tuple[FrontEdge, ...] = ()
        self._rankings: dict[Coordinates | None, list[tuple[str, float | None]]] = {}

    async def set_edges(self, edges: Sequence[FrontEdge]) -> None:
        """Make the fleet exactly `edges`; pools keep what they know of edges they already had."""
        edges = tuple(edges)
        if edges == self._current:
            return
        self._current = edges
        by_region: dict[str, list[FrontEdge]] = {}
        for edge in edges:
            by_region.setdefault(edge.region, []).append(edge)
        # Every change is made before the first await, so no request sees a half-updated fleet.
        self.edges = {edge.url: edge for edge in edges}
        added: list[OriginPool] = []
        for region, members in by_region.items():
            specs = [MemberSettings(url=e.url, weight=e.weight) for e in members]
            pool = self.pools.get(region)
            if pool is None:
                pool = self.pools[region] = OriginPool(self._pool_settings(specs), clock=self.clock)
                added.append(pool)
            else:
                pool.set_members(specs)
        gone = [self.pools.pop(region) for region in list(self.pools) if region not in by_region]
        self.locations = dict(self.table)
        for region, members in by_region.items():
            # An edge's own coordinates say where its region is better than a table of names does.
            located = next((e for e in members if e.latitude is not None and e.longitude is not None), None)
            if located is not None:
                self.locations[region] = Coordinates(located.latitude, located.longitude)  # type: ignore[arg-type]
        self._rankings = {}
        if self.started:
            for pool in added:
                await pool.start()
        for pool in gone:
            await pool.stop()

    def _pool_settings(self, members: list[MemberSettings]) -> PoolSettings:
        return PoolSettings(members=members, algorithm="consistent_hash", health=self.health, passive=self.passive)

    def ranked_regions(self, location: Coordinates | None) -> list[tuple[str, float | None]]:
        """Regions that have edges, nearest first, with their distance; regions of unknown distance last, by name."""
        ranking = self._rankings.get(location)
        if ranking is None:
            located = {} if location is None else {r: self.locations[r] for r in self.pools if r in self.locations}
            ranking = [*(by_distance(location, located) if location is not None else []),
                       *((region, None) for region in sorted(self.pools) if region not in located)]
            if len(self._rankings) >= RANKING_CACHE_SIZE:
                self._rankings = {}
            self._rankings[location] = ranking
        return ranking

    def route(self, placement: Placement, key: str, exclude: frozenset[str] = frozenset()) -> Route | None:
        """The key's edge in the nearest region with an available edge not in `exclude` (URLs); None if none is."""
        for region, distance in self.ranked_regions(placement.location):
            pool = self.pools[region]
            member = pool.pick(key=key, exclude=exclude)
            if member is not None:
                return Route(self.edges[member.url], member, pool, region, distance)
        return None

    def availability(self) -> dict[str, tuple[int, int]]:
        """Region -> (available edges, edges)."""
        now = self.clock()
        return {region: (sum(m.available(now) for m in pool.members), len(pool.members))
                for region, pool in sorted(self.pools.items())}

    def snapshot(self) -> dict[str, Any]:
        """Every region with its location and pool state, for the admin endpoint."""
        regions: dict[str, Any] = {}
        for region, pool in sorted(self.pools.items()):
            where = self.locations.get(region)
            state = pool.snapshot()
            for member in state["members"]:
                member["id"] = self.edges[member["url"]].id
            regions[region] = {"location": None if where is None else list(where), **state}
        return {"regions": regions}

    async def start(self) -> None:
        """Start health checking every region's edges (and those of regions added later)."""
        self.started = True
        for pool in self.pools.values():
            await pool.start()

    async def stop(self) -> None:
        """Stop every health check."""
        self.started = False
        for pool in self.pools.values():
            await pool.stop()
