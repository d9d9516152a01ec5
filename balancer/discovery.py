"""The front door learns its edges from the edge registry (Redis, or an in-process log), every second or so."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from balancer.fleet import EdgeFleet
from balancer.router_settings import FrontEdge
from purge_api.log import EdgeInfo, LogUnavailable, PurgeLog

log = logging.getLogger("cdn.router.discovery")


def live_edges(registered: Sequence[EdgeInfo], now: float, live_after: float) -> list[FrontEdge]:
    """Registered edges whose heartbeat is younger than `live_after`, by id; those without a usable address are left out."""
    edges = []
    for info in sorted(registered, key=lambda e: e.id):
        if now - info.heartbeat_at > live_after:
            continue
        located = info.latitude is not None and info.longitude is not None
        try:
            edges.append(FrontEdge(url=info.address, id=info.id, region=info.region or "local",
                                   latitude=info.latitude if located else None,
                                   longitude=info.longitude if located else None))
        except ValidationError as exc:
            log.debug("registered edge %s is not usable: %s", info.id, exc)
    return edges


def merge_edges(static: Sequence[FrontEdge], discovered: Sequence[FrontEdge]) -> list[FrontEdge]:
    """Configured edges, then discovered ones at URLs and ids not configured (configuration wins)."""
    urls = {e.url for e in static}
    ids = {e.id for e in static}
    return [*static, *(e for e in discovered if e.url not in urls and e.id not in ids)]


class RegistryWatcher:
    """Reads the registry every `interval` and makes the fleet its live edges plus the configured ones."""

    def __init__(self, registry: PurgeLog, fleet: EdgeFleet, static: Sequence[FrontEdge], live_after: float,
                 interval: float, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.fleet = fleet
        self.static = list(static)
        self.live_after = live_after
        self.interval = interval
        self.clock = clock
        self.reachable: bool | None = None  # None until the first read
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Read the registry once and update the fleet; raises LogUnavailable when the registry cannot be read."""
        registered = await self.registry.edges()
        await self.fleet.set_edges(merge_edges(self.static, live_edges(registered, self.clock(), self.live_after)))

    async def run(self) -> None:
        """Refresh until cancelled; while the registry is unreachable the fleet keeps the edges it had."""
        while True:
            try:
                await self.refresh()
                if self.reachable is False:
                    log.warning("edge registry reachable again")
                self.reachable = True
            except LogUnavailable as exc:
                self.failures += 1
                if self.reachable is not False:
                    log.warning("edge registry unreachable, keeping the edges known so far: %s", exc)
                self.reachable = False
            except Exception:
                # A bug in one round must not end discovery for good.
                self.failures += 1
                log.exception("edge registry refresh failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Run in a background task of the running loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="router-discovery")

    async def stop(self) -> None:
        """Cancel the task and wait for it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
