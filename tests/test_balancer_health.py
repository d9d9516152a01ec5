"""Active health checks against real servers on loopback: fall, rise, expected status, timeouts, reported load."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from balancer import Failure, Member, OriginPool, PoolSettings
from origin_mock.app import create_app as create_origin
from origin_mock.settings import OriginSettings
from tests.servers import ThreadServer, free_port

INTERVAL = 0.1
SLACK = 3.0  # seconds; the machine is shared, so bounds are generous and only from above


class HealthEndpoint:
    """A server whose `/healthz` answer (status, delay, body) the test changes while it runs."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.body: dict[str, Any] = {"status": "ok", "in_flight": 0}

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await asyncio.sleep(self.delay)
        body = json.dumps(self.body).encode()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def servers() -> Iterator[list[tuple[HealthEndpoint, str]]]:
    endpoints = [HealthEndpoint(), HealthEndpoint()]
    with ThreadServer(endpoints[0]) as first, ThreadServer(endpoints[1]) as second:
        yield [(endpoints[0], first.url), (endpoints[1], second.url)]


def pool_of(urls: list[str], algorithm: str = "round_robin", **health: Any) -> OriginPool:
    return OriginPool(PoolSettings.model_validate({
        "members": urls, "algorithm": algorithm,
        "health": {"interval": INTERVAL, "timeout": 0.5, "rise": 2, "fall": 3, **health}}))


async def wait_until(condition: Callable[[], bool], limit: float = 10.0) -> float:
    """Seconds until `condition` held; fails after `limit`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, "condition never held"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def checks_seen(member: Member) -> Callable[[], bool]:
    return lambda: member.health.passes + member.health.failures > 0


async def test_a_failing_member_leaves_within_fall_intervals_and_returns_within_rise(
        servers: list[tuple[HealthEndpoint, str]]) -> None:
    (sick, sick_url), (_, well_url) = servers
    async with pool_of([sick_url, well_url]) as pool:
        member = pool.members[0]
        await wait_until(checks_seen(member))
        sick.status = 503
        down_after = await wait_until(lambda: not member.health.healthy)
        assert 2 * INTERVAL * 0.9 <= down_after < 3 * INTERVAL + SLACK  # three failures need two intervals
        assert member.health.last_error == "status 503, expected 200"
        assert {m.url for m in (pool.pick() for _ in range(10)) if m} == {well_url}
        sick.status = 200
        up_after = await wait_until(lambda: member.health.healthy)
        assert INTERVAL * 0.9 <= up_after < 2 * INTERVAL + SLACK
        assert {m.url for m in (pool.pick() for _ in range(10)) if m} == {sick_url, well_url}


async def test_the_expected_status_decides_a_pass(servers: list[tuple[HealthEndpoint, str]]) -> None:
    (endpoint, url), _ = servers
    async with pool_of([url], expected_status=204) as pool:
        await wait_until(lambda: not pool.members[0].health.healthy)
        assert pool.pick() is None
        endpoint.status = 204
        await wait_until(lambda: pool.members[0].health.healthy)
        assert pool.pick() is pool.members[0]


async def test_a_check_that_times_out_counts_as_a_failure(servers: list[tuple[HealthEndpoint, str]]) -> None:
    (endpoint, url), _ = servers
    endpoint.delay = 1.0
    async with pool_of([url], timeout=0.2) as pool:
        await wait_until(lambda: not pool.members[0].health.healthy)
        assert pool.members[0].health.last_error == "no answer within 0.2s"


async def test_a_refused_connection_counts_as_a_failure() -> None:
    async with pool_of([f"http://127.0.0.1:{free_port()}"]) as pool:
        await wait_until(lambda: not pool.members[0].health.healthy)
        assert "ConnectError" in str(pool.members[0].health.last_error)


async def test_members_can_wait_for_their_first_checks_before_taking_traffic(
        servers: list[tuple[HealthEndpoint, str]]) -> None:
    (_, url), _ = servers
    async with pool_of([url], initially_healthy=False) as pool:
        assert pool.pick() is None
        await wait_until(lambda: pool.pick() is not None)


async def test_reported_load_steers_resource_based_picks(servers: list[tuple[HealthEndpoint, str]]) -> None:
    (busy, busy_url), (_, idle_url) = servers
    busy.body = {"status": "ok", "in_flight": 12, "load": 0.9}
    async with pool_of([busy_url, idle_url], algorithm="resource_based") as pool:
        await wait_until(lambda: pool.members[0].report is not None)
        assert pool.members[0].report.load == 0.9  # type: ignore[union-attr]
        assert {m.url for m in (pool.pick() for _ in range(20)) if m} == {idle_url}


async def test_the_origin_mock_health_answer_is_understood() -> None:
    with ThreadServer(create_origin(OriginSettings())) as origin:
        async with pool_of([origin.url], algorithm="resource_based") as pool:
            await wait_until(lambda: pool.members[0].report is not None)
            assert pool.members[0].report.in_flight == 0  # type: ignore[union-attr]
            assert pool.members[0].health.failures == 0


async def test_a_passing_check_brings_an_ejected_member_back_before_its_backoff_ends(
        servers: list[tuple[HealthEndpoint, str]]) -> None:
    (_, url), _ = servers
    settings = PoolSettings.model_validate({
        "members": [url], "health": {"interval": INTERVAL}, "passive": {"failures": 1, "backoff": 60, "max_backoff": 60}})
    async with OriginPool(settings) as pool:
        member = pool.members[0]
        with pool.attempt(member) as attempt:
            attempt.failed(Failure.CONNECT)
        assert pool.pick() is None
        assert await wait_until(lambda: pool.pick() is member) < SLACK


async def test_stopping_ends_the_checks() -> None:
    pool = pool_of([f"http://127.0.0.1:{free_port()}"])
    await pool.start()
    await wait_until(checks_seen(pool.members[0]))
    await pool.stop()
    seen = pool.members[0].health.failures
    await asyncio.sleep(3 * INTERVAL)
    assert pool.members[0].health.failures == seen
