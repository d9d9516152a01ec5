"""The origin as a scaled backend (shared store, lagging replicas) and the purge that lag cannot undo."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edge.app import Edge, create_app as create_edge
from edge.settings import EdgeSettings
from origin_mock.app import create_app as create_origin
from origin_mock.settings import OriginSettings
from purge_api.app import create_app as create_purge_api
from purge_api.log import MemoryPurgeLog
from purge_api.settings import PurgeApiSettings
from tests.redis_server import RedisServer
from tests.servers import ThreadServer, free_port

TOKEN = "t"
HOST = {"Host": "shop.example"}


# -- the origin as a scaled backend ------------------------------------------------


def test_instances_share_products_and_carts_through_redis(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path).start()
    try:
        settings = OriginSettings(products=50, redis=redis.url)
        with ThreadServer(create_origin(settings)) as one, ThreadServer(create_origin(settings)) as two, httpx.Client() as c:
            changed = c.patch(one.url + "/api/products/9", json={"name": "Renamed"})
            assert changed.status_code == 200
            seen = c.get(two.url + "/api/products/9").json()
            assert seen["name"] == "Renamed" and seen["version"] == 2
            page = c.get(two.url + "/api/products?page=1").json()
            assert page["items"][8]["name"] == "Renamed"
            cart = c.post(one.url + "/api/cart", json={"product_id": 3, "quantity": 2})
            session = cart.cookies["session"]
            c.cookies.set("session", session)
            assert c.get(two.url + "/api/cart").json()["count"] == 2
    finally:
        redis.kill()


def test_replica_reads_lag_behind_the_primary_until_they_catch_up() -> None:
    origin = create_origin(OriginSettings(products=10, replicas=2, replication_lag_ms=300))
    with ThreadServer(origin) as server, httpx.Client(base_url=server.url) as client:
        client.patch("/api/products/4", json={"price": 2.0})
        client.cookies.clear()
        lagging = client.get("/api/products/4")
        assert lagging.headers["x-served-from"].startswith("replica-")
        assert lagging.headers["x-content-version"] == "1"
        time.sleep(0.35)
        assert client.get("/api/products/4").headers["x-content-version"] == "2"
        state = client.get("/_origin/replication").json()
    assert state["replicas"] == 2 and state["max_lag_ms"] == 300


def test_a_client_reads_its_own_writes_from_the_primary() -> None:
    origin = create_origin(OriginSettings(products=10, replicas=1, replication_lag_ms=1000, read_your_writes_ms=2000))
    with ThreadServer(origin) as server, httpx.Client(base_url=server.url) as writer, httpx.Client(base_url=server.url) as other:
        writer.patch("/api/products/4", json={"price": 2.0})
        mine = writer.get("/api/products/4")
        theirs = other.get("/api/products/4")
    assert (mine.headers["x-served-from"], mine.headers["x-content-version"]) == ("primary", "2")
    assert theirs.headers["x-content-version"] == "1"


# -- the race, and closing it --------------------------------------------------------


@dataclass
class Shop:
    edges: list[Edge]
    edge_urls: list[str]
    origin_url: str
    api_url: str
    log: MemoryPurgeLog

    def change_and_wait(self, client: httpx.Client, product: int) -> tuple[int, dict]:
        """Change a product (its origin sends the purge) and wait until every edge applied it (and any repeat)."""
        changed = client.patch(f"{self.origin_url}/api/products/{product}", json={"price": 1.0})
        status = client.get(f"{self.api_url}/purges/{changed.headers['x-purge-id']}", params={"wait": "10"},
                            headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert status["complete"], status
        return int(changed.headers["x-content-version"]), status


def shop(lag_ms: float, fence: bool, repurge_delay: float = 0.0, edges: int = 2) -> Iterator[Shop]:
    log = MemoryPurgeLog()
    api_port = free_port()
    origin = create_origin(OriginSettings(products=10, product_max_age=600, replicas=2, replication_lag_ms=lag_ms,
                                          purge_api=f"http://127.0.0.1:{api_port}", purge_token=TOKEN,
                                          purge_version_fence=fence))
    api = create_purge_api(PurgeApiSettings(token=TOKEN, live_after=2, repurge_delay=repurge_delay), purge_log=log)
    with ThreadServer(origin) as origin_server, ThreadServer(api, port=api_port) as api_server:
        apps = [create_edge(EdgeSettings(origin=origin_server.url, id=f"edge-{i}", heartbeat_interval=0.1), purge_log=log)
                for i in range(edges)]
        servers = [ThreadServer(a, proxy=True).__enter__() for a in apps]
        try:
            time.sleep(0.3)  # registered
            yield Shop(apps, [s.url for s in servers], origin_server.url, api_server.url, log)
        finally:
            for s in servers:
                s.__exit__(None, None, None)


def read_versions(shop_: Shop, client: httpx.Client, seconds: float, product: int = 3) -> list[int]:
    versions = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for url in shop_.edge_urls:
            response = client.get(f"{url}/api/products/{product}", headers=HOST)
            if response.status_code == 200:
                versions.append(int(response.headers["x-content-version"]))
    return versions


def test_without_protection_a_lagging_replica_re_poisons_the_cache_after_a_purge() -> None:
    for s in shop(lag_ms=300, fence=False):
        with httpx.Client(timeout=10) as client:
            assert set(read_versions(s, client, 0.2)) == {1}
            version, _ = s.change_and_wait(client, 3)
            after = read_versions(s, client, 0.6)
    assert version == 2
    # The refetch right after the purge read a replica 300 ms behind: version 1 is cached again
    # and served long after the replica caught up.
    assert after[-1] == 1
    assert after.count(1) > len(after) // 2


def test_a_version_fence_keeps_the_old_version_out_after_the_purge() -> None:
    for s in shop(lag_ms=300, fence=True):
        with httpx.Client(timeout=10) as client:
            read_versions(s, client, 0.2)
            version, _ = s.change_and_wait(client, 3)
            after = read_versions(s, client, 0.6)
    assert after and min(after) == version == 2
    assert sum(e.counters.get("fenced_refetch", 0) for e in s.edges) > 0  # the race happened and was caught


def test_a_delayed_second_purge_removes_what_the_lag_put_back() -> None:
    for s in shop(lag_ms=300, fence=False, repurge_delay=0.5):
        with httpx.Client(timeout=10) as client:
            read_versions(s, client, 0.2)
            version, status = s.change_and_wait(client, 3)
            after = read_versions(s, client, 0.5)
    assert status["repurge"]["complete"]
    assert after and min(after) == version


def test_a_restarted_edge_takes_the_fences_still_in_force_from_the_log() -> None:
    for s in shop(lag_ms=1000, fence=True, edges=1):
        with httpx.Client(timeout=10) as client:
            read_versions(s, client, 0.1)
            version, _ = s.change_and_wait(client, 3)
            fresh = create_edge(EdgeSettings(origin=s.origin_url, id="edge-restarted", heartbeat_interval=0.1),
                                purge_log=s.log)
            with ThreadServer(fresh, proxy=True) as server:
                response = client.get(f"{server.url}/api/products/3", headers=HOST)
    assert int(response.headers["x-content-version"]) == version
    assert fresh.counters.get("fenced_refetch", 0) > 0


@pytest.mark.parametrize("protection", ["fence", "repurge"])
def test_no_stale_response_after_acknowledged_purges_with_concurrent_readers(protection: str) -> None:
    """Many changes in a loop, readers on every edge; count responses older than an acknowledged purge."""
    fence = protection == "fence"
    for s in shop(lag_ms=300, fence=fence, repurge_delay=0.0 if fence else 0.45):
        reads: list[tuple[float, int]] = []
        stop = threading.Event()

        def reader(url: str) -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    started = time.time()
                    response = client.get(f"{url}/api/products/3", headers=HOST)
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        reads.append((started, int(response.headers["x-content-version"])))

        statuses: list[int] = []
        threads = [threading.Thread(target=reader, args=(url,)) for url in s.edge_urls for _ in range(2)]
        for t in threads:
            t.start()
        safe_after: list[tuple[float, int]] = []  # (time all edges applied it, version it protects)
        try:
            with httpx.Client(timeout=15) as client:
                for _ in range(8):
                    version, status = s.change_and_wait(client, 3)
                    final = status["repurge"] if not fence else status
                    safe_after.append((max(a["at"] for a in final["applied"].values()), version))
                    time.sleep(0.4)  # readers keep reading between changes
        finally:
            stop.set()
            for t in threads:
                t.join()
        stale = [(started, seen, version) for at, version in safe_after for started, seen in reads
                 if started > at and seen < version]
        assert stale == []
        assert len(reads) > 50, (statuses[:50], [e.counters for e in s.edges])


def test_a_fence_compares_versions_of_one_object_only() -> None:
    """A change to product 5 (version 3) must not fence product 6 (version 1) through the shared list tag."""
    for s in shop(lag_ms=0, fence=True, edges=1):
        with httpx.Client(timeout=10) as client:
            for _ in range(2):
                s.change_and_wait(client, 5)
            response = client.get(f"{s.edge_urls[0]}/api/products/6", headers=HOST)
            page = client.get(f"{s.edge_urls[0]}/api/products?page=1", headers=HOST)
    assert response.status_code == 200 and response.headers["x-content-version"] == "1"
    assert page.status_code == 200
    assert s.edges[0].counters.get("fenced_refetch", 0) == 0
