"""Active health checks, the I/O half: probe every member each interval and hand the results to the pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import httpx

from balancer.member import LoadReport, Member
from balancer.settings import HealthCheckSettings

if TYPE_CHECKING:
    from balancer.pool import OriginPool

log = logging.getLogger(__name__)

USER_AGENT = "cdn-balancer-health/1"


class HealthChecker:
    """One asyncio task per pool: a round of concurrent probes every `interval`, each bounded by `timeout`."""

    def __init__(self, pool: OriginPool, settings: HealthCheckSettings, client: httpx.AsyncClient | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self._owns_client = client is None
        self.client = client  # ours is opened on first use
        self._task: asyncio.Task[None] | None = None

    def _http(self) -> httpx.AsyncClient:
        if self.client is None or (self._owns_client and self.client.is_closed):
            # No keep-alive: each check opens a connection, as requests would, so one that cannot be made is seen.
            self.client = httpx.AsyncClient(timeout=self.settings.timeout, trust_env=False, follow_redirects=False,
                                            limits=httpx.Limits(max_keepalive_connections=0))
        return self.client

    async def check(self, member: Member) -> None:
        """Probe one member once and record the result with the pool."""
        report: LoadReport | None = None
        try:
            async with asyncio.timeout(self.settings.timeout):
                response = await self._http().get(member.url + self.settings.path, headers={"user-agent": USER_AGENT})
        except (TimeoutError, httpx.TimeoutException):
            passed, error = False, f"no answer within {self.settings.timeout}s"
        except (httpx.HTTPError, OSError) as exc:
            passed, error = False, f"{type(exc).__name__}: {exc}"
        else:
            passed = response.status_code == self.settings.expected_status
            error = None if passed else f"status {response.status_code}, expected {self.settings.expected_status}"
            report = LoadReport.parse(response.content)
        self.pool.record_check(member, passed, report, error)

    async def check_all(self) -> None:
        """One round: probe every member concurrently."""
        await asyncio.gather(*(self.check(member) for member in list(self.pool.members)))

    async def run(self) -> None:
        """Rounds until cancelled, each starting `interval` after the previous one started (or at once if late)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.check_all()
            except Exception:
                # A bug in one round must not end health checking for good, leaving stale verdicts in place.
                log.exception("health check round failed")
            await asyncio.sleep(max(0.0, self.settings.interval - (loop.time() - started)))

    def start(self) -> None:
        """Run the checks in a background task of the running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="balancer-health")

    async def stop(self) -> None:
        """Cancel the task, wait for it, and close the client if it is ours."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owns_client and self.client is not None:
            await self.client.aclose()
