"""The abuse scenario: a flood through two edges sharing fleet limits in Redis, bounded in count and time.

20 attacking clients (one busting the cache with random query strings) and 5
ordinary clients, each from its own loopback address, straight at two edges
that share their limits through a real redis-server. The origin must see no
more than its budget, ordinary clients must get through, attackers must mostly
get 429.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

from cdn.workload import ConnectionPool, RequestFailed
from edge.app import create_app as create_edge
from edge.settings import EdgeSettings
from origin_mock.app import create_app as create_origin
from origin_mock.settings import OriginSettings
from tests.redis_server import RedisServer
from tests.servers import ThreadServer

DURATION = 5.0
BUDGET_RATE, BUDGET_BURST = 40.0, 40  # origin requests per second, whole fleet
RULES = [
    {"name": "origin", "key": ["ip"], "scope": "origin", "rate": 1, "burst": 3},
    {"name": "origin-budget", "key": [], "scope": "origin", "rate": BUDGET_RATE, "burst": BUDGET_BURST, "action": "shed"},
]
POPULAR = [f"/api/products/{i}" for i in range(1, 11)]


async def client_loop(pool: ConnectionPool, rate: float, targets: list[str], results: Counter[int],
                      deadline: float, bust: bool = False) -> None:
    rng = random.Random(id(pool))
    while time.monotonic() < deadline:
        target = rng.choice(targets)
        if bust:
            target += f"?cb={rng.getrandbits(40):x}"
        try:
            response = await pool.request("GET", target)
            results[response.status] += 1
        except RequestFailed:
            results[0] += 1
        await asyncio.sleep(1 / rate)


async def flood(edge_urls: list[str]) -> tuple[Counter[int], Counter[int]]:
    deadline = time.monotonic() + DURATION
    ordinary: Counter[int] = Counter()
    attackers: Counter[int] = Counter()
    misses = [f"/api/products/{i}" for i in range(100, 2000)]
    loops = []
    for i in range(5):
        pool = ConnectionPool(edge_urls[i % 2], local_address=f"127.0.0.{10 + i}", max_connections=2)
        loops.append(client_loop(pool, 5, POPULAR, ordinary, deadline))
    for i in range(20):
        pool = ConnectionPool(edge_urls[i % 2], local_address=f"127.0.0.{100 + i}", max_connections=2)
        loops.append(client_loop(pool, 25, misses, attackers, deadline, bust=(i == 0)))
    await asyncio.gather(*loops)
    return ordinary, attackers


def test_a_flood_is_stopped_at_the_edges_while_ordinary_clients_get_through(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path).start()
    origin = create_origin(OriginSettings(products=5000, product_max_age=600))
    try:
        with ThreadServer(origin) as origin_server:
            edges = [create_edge(EdgeSettings(origin=origin_server.url, id=f"edge-{i}", redis=redis.url,
                                              # Everything shares one test process on a busy machine: a
                                              # Redis answer can take longer than the 50 ms default, which
                                              # would fall back to per-edge limits (the stated bound).
                                              shield={"rules": RULES, "redis_timeout": 1.0}))
                     for i in range(2)]
            with ThreadServer(edges[0], proxy=True) as a, ThreadServer(edges[1], proxy=True) as b:
                warm = asyncio.run(warm_up([a.url, b.url]))
                assert warm == {200}
                before = origin.state.stats.snapshot()["total"]
                started = time.monotonic()
                ordinary, attackers = asyncio.run(flood([a.url, b.url]))
                elapsed = time.monotonic() - started
                origin_requests = origin.state.stats.snapshot()["total"] - before
                snapshots = [e.shield.snapshot()["redis"] for e in edges]
                counters = [e.counters for e in edges]
    finally:
        redis.kill()
    assert origin_requests <= BUDGET_RATE * elapsed + BUDGET_BURST, (origin_requests, elapsed, snapshots, counters)
    assert ordinary[200] >= 0.99 * sum(ordinary.values()), ordinary
    assert attackers[429] > 0.5 * sum(attackers.values()), attackers
    assert sum(ordinary.values()) > 50 and sum(attackers.values()) > 500


async def warm_up(edge_urls: list[str]) -> set[int]:
    statuses = set()
    for url in edge_urls:
        for j, target in enumerate(POPULAR):  # one address each: warming is not abuse
            pool = ConnectionPool(url, local_address=f"127.0.0.{230 + j}")
            statuses.add((await pool.request("GET", target)).status)
    return statuses
