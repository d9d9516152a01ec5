"""The edge's side of the purge fan-out: read the purge log in order, apply, acknowledge, heartbeat.

Hits never wait on this: it runs as one background task. While the log is
unreachable the edge keeps serving what it holds and retries; when it comes
back the edge catches up from its own position. If entries were trimmed past
that position, or the log was lost and started anew (its epoch changed), the
edge cannot know what it missed and empties its cache instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from edge.store import Store
from edge.uri import normalise_path
from purge_api.log import Ack, EdgeInfo, LogUnavailable, Purge, PurgeLog, after

log = logging.getLogger("cdn.edge.purge")


def url_key(value: str) -> str:
    """The store's URL key (host + path?query) of a purge value given as a URL or as host/path; the path in
    normal form, as the edge keys requests (`edge.uri`)."""
    if "://" in value:
        parts = urlsplit(value)
        return parts.netloc.lower() + normalise_path(parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host, slash, rest = value.partition("/")
    path, mark, query = (slash + rest).partition("?")
    return host.lower() + normalise_path(path) + mark + query


def apply_purge(store: Store, purge: Purge, fence_ttl: float = 300.0) -> int:
    """Apply one purge to the store; the number of entries removed or marked stale."""
    if purge.version is not None:
        record_fence(store, purge, fence_ttl)
    if purge.kind == "url":
        return sum(store.purge_url(url_key(v), purge.soft) for v in purge.values)
    if purge.kind == "prefix":
        return sum(store.purge_prefix(url_key(v), purge.soft) for v in purge.values)
    if purge.kind == "tag":
        return store.purge_tags(purge.values, purge.soft)
    if purge.kind == "all":
        return store.purge_all(purge.soft)
    raise ValueError(f"unknown purge kind {purge.kind!r}")


def record_fence(store: Store, purge: Purge, fence_ttl: float) -> None:
    values = purge.values if purge.fenced is None else purge.fenced
    values = [url_key(v) for v in values] if purge.kind in ("url", "prefix") else list(values)
    store.fence(purge.kind, values, purge.version or 0, purge.created_at + fence_ttl)


# Seconds a listener waits after applying a batch before reading the next, only while purges keep
# coming: a following edge then reads them a few at a time instead of one per round trip.
BURST_LINGER = 0.005


class PurgeListener:
    """Keeps one edge's store in step with the purge log and the edge registered."""

    def __init__(self, purge_log: PurgeLog, store: Store, info: EdgeInfo, heartbeat_interval: float = 1.0,
                 stats: Callable[[], dict[str, Any]] | None = None, count: Callable[[str, int], None] | None = None,
                 fence_ttl: float = 300.0) -> None:
        self.log = purge_log
        self.fence_ttl = fence_ttl
        self.store = store
        self.info = info
        self.heartbeat_interval = heartbeat_interval
        self.stats = stats or (lambda: {})
        self.count = count or (lambda name, n: None)
        self.epoch: str | None = None
        self.position: str | None = None
        self.appended = 0  # entries ever appended to the log up to `position`
        self.connected = False
        self.lag: list[float] = []  # seconds from purge creation to application, recent ones
        self._task: asyncio.Task[None] | None = None
        self._last_heartbeat = 0.0
        self._unacked: Ack | None = None  # applied, acknowledged with the next read

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._unacked is not None:  # applied before stopping: say so, so nobody waits for this edge
            try:
                await asyncio.wait_for(self.log.ack(*self._unacked), timeout=1.0)
                self.acknowledged()
            except (LogUnavailable, asyncio.TimeoutError):
                self.count("purge_log_unavailable", 1)

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self.sync()
                self.connected = True
                backoff = 0.05
                while True:
                    entries = await self.log.read(self.position, block=self.heartbeat_interval, ack=self._unacked)
                    self.acknowledged()
                    if entries:
                        self.apply_batch(entries)
                        self._unacked = (self.info.id, entries, time.time())
                        # In a burst, let the next few purges gather: one round trip then carries them all.
                        await asyncio.sleep(BURST_LINGER)
                    if time.monotonic() - self._last_heartbeat >= self.heartbeat_interval:
                        # Also re-checks the epoch and for trimming: a client that reconnects by
                        # itself would otherwise hide a Redis that restarted empty.
                        await self.sync()
            except LogUnavailable as exc:
                if self.connected:
                    log.warning("edge %s lost the purge log: %s", self.info.id, exc)
                self.connected = False
                self.count("purge_log_unavailable", 1)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def flush(self, why: str) -> None:
        """Empty the cache: what was missed cannot be known."""
        flushed = self.store.purge_all()
        self.count("purge_log_flush", 1)
        log.warning("edge %s emptied its cache (%d entries): %s", self.info.id, flushed, why)

    async def sync(self) -> None:
        """On (re)connection and every heartbeat: take the log's position, or flush if what we missed is unknowable."""
        epoch = await self.log.epoch()
        if self.position is None or epoch != self.epoch or await self.log.missed_since(self.appended):
            if self.position is not None:
                self.flush("the purge log was reset" if epoch != self.epoch else "the purge log was trimmed past it")
            self.epoch = epoch
            self.position, self.appended = await self.log.tail()
            # Version fences travel in the log: take those still in force, so a restarted edge
            # does not cache what a lagging replica still serves.
            for _, purge in await self.log.history(time.time() - self.fence_ttl):
                if purge.version is not None:
                    record_fence(self.store, purge, self.fence_ttl)
            self.info.clean_through = self.position
            self.info.applied_through = self.position
        await self.heartbeat()

    async def apply(self, entries: list[tuple[str, Purge]]) -> None:
        """Apply in order, then acknowledge the batch (an ack is only ever sent after the purge took effect)."""
        self.apply_batch(entries)
        self._unacked = (self.info.id, entries, time.time())
        await self.log.ack(*self._unacked)
        self.acknowledged()

    def acknowledged(self) -> None:
        """The pending ack was recorded: only now may the registry say this edge applied those purges."""
        if self._unacked is not None:
            last = self._unacked[1][-1][0]
            if after(last, self.info.applied_through):  # a flush may have moved it past this batch
                self.info.applied_through = last
            self._unacked = None

    def apply_batch(self, entries: list[tuple[str, Purge]]) -> None:
        """Apply in order; the caller acknowledges them (with its next read, or at once)."""
        now = time.time()
        for position, purge in entries:
            if purge.seq != self.appended + 1:
                # A gap: entries between were trimmed before we read them, or the log started over.
                self.flush(f"purge log entries {self.appended + 1}..{purge.seq - 1} were missed")
            removed = apply_purge(self.store, purge, self.fence_ttl)
            self.count("purges_applied", 1)
            self.count("purged_objects", removed)
            self.lag.append(max(0.0, now - purge.created_at))
            self.position = position
            self.appended = purge.seq
        del self.lag[:-1000]

    async def wait_until_applied(self, position: str, timeout: float) -> bool:
        """Whether this edge has applied the log up to `position`, waiting up to `timeout` for it."""
        try:
            after(position, "0-0")
        except ValueError:
            return True  # not a position: nothing to wait for
        deadline = time.monotonic() + timeout
        while self.position is None or after(position, self.position):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def heartbeat(self) -> None:
        self.info.heartbeat_at = time.time()
        self.info.stats = self.stats()
        await self.log.heartbeat(self.info)
        self._last_heartbeat = time.monotonic()
