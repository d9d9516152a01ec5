"""Where the edge's misses go: parent edges (the shield tier) when configured, else the origin pool.

Members are chosen by `balancer`: parents by consistent hashing on the cache key
(so each object has one home in the shield tier), origins by the pool's
algorithm. A failed connection for an idempotent request is retried once on
another member; parents that cannot answer are skipped for the origin pool.
"""

from __future__ import annotations

from balancer import Failure, HealthCheckSettings, OriginPool, PassiveSettings, PoolSettings
from edge.origin import IDEMPOTENT_METHODS, HttpUpstream, OriginError, OriginResponse
from edge.settings import EdgeSettings


def origin_pool_settings(settings: EdgeSettings) -> PoolSettings:
    """The configured pool, or one member `origin` that is never health-checked nor ejected (nowhere else to go)."""
    if settings.pool is not None:
        return settings.pool
    return PoolSettings(members=[settings.origin], health=HealthCheckSettings(enabled=False),
                        passive=PassiveSettings(enabled=False))


def parent_pool_settings(settings: EdgeSettings) -> PoolSettings | None:
    if not settings.parents:
        return None
    return PoolSettings(members=settings.parents, algorithm="consistent_hash",
                        health=HealthCheckSettings(path="/_edge/health", interval=1.0, timeout=1.0, rise=1, fall=2))


class Upstream:
    def __init__(self, settings: EdgeSettings) -> None:
        self.http = HttpUpstream(settings.connect_timeout, settings.origin_timeout)
        self.origins = OriginPool(origin_pool_settings(settings))
        parents = parent_pool_settings(settings)
        self.parents = OriginPool(parents) if parents else None
        self.origin_requests = 0  # responses received from origin servers (offload accounting)

    async def start(self) -> None:
        await self.origins.start()
        if self.parents is not None:
            await self.parents.start()

    async def stop(self) -> None:
        if self.parents is not None:
            await self.parents.stop()
        await self.origins.stop()
        await self.http.aclose()

    async def open(self, method: str, target: str, headers: list[tuple[str, str]], key: str,
                   body: bytes | None = None, parent_headers: list[tuple[str, str]] = ()) -> OriginResponse:
        """Send the request to a parent or an origin; OriginError (503 when no member is available)."""
        if self.parents is not None:
            try:
                return await self._try_pool(self.parents, method, target, [*headers, *parent_headers], key, body)
            except OriginError:
                pass  # the shield tier cannot answer: go to the origin ourselves
        return await self._try_pool(self.origins, method, target, headers, key, body)

    async def _try_pool(self, pool: OriginPool, method: str, target: str, headers: list[tuple[str, str]],
                        key: str, body: bytes | None) -> OriginResponse:
        tried: set[str] = set()
        tries = 2 if method in IDEMPOTENT_METHODS else 1
        last: OriginError | None = None
        for _ in range(tries):
            member = pool.pick(key=key, exclude=frozenset(tried))
            if member is None:
                break
            attempt = pool.attempt(member)
            try:
                response = await self.http.open(method, member.url, target, headers, body)
            except OriginError as exc:
                if exc.failure is not None:
                    attempt.failed(exc.failure)
                attempt.close()
                if exc.failure is not Failure.CONNECT:
                    raise
                tried.add(member.url)
                last = exc
                continue
            attempt.responded(response.status)
            response.on_close = attempt.close
            if pool is self.origins:
                self.origin_requests += 1
            return response
        if last is not None:
            raise last
        raise OriginError(503, "no healthy origin server is available")

    def snapshot(self) -> dict[str, object]:
        state: dict[str, object] = {"origins": self.origins.snapshot()}
        if self.parents is not None:
            state["parents"] = self.parents.snapshot()
        return state
