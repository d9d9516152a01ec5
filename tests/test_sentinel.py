"""Redis behind Sentinel: the URL form, every service's client, and purges across a failover.

The end-to-end tests run a master, a replica and three Sentinels (quorum 2) from the
plain redis-server binary, the purge API and two edges on loopback; every service is
given only the Sentinel URL.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.asyncio.sentinel import SentinelConnectionPool

from balancer.router_settings import RouterSettings
from cdn.config import ServiceSettings, SettingsError, load_settings
from cdn.redis_url import SentinelUrl, check_redis_url, parse_sentinel_url
from edge.app import create_app as create_edge
from edge.settings import EdgeSettings
from edge.shield.fleet import FleetLimiter
from origin_mock.database import RedisDatabase
from origin_mock.settings import OriginSettings
from purge_api.app import create_app as create_purge_api
from purge_api.log import RedisPurgeLog
from purge_api.settings import PurgeApiSettings
from tests.redis_server import RedisServer, SentinelGroup, wait_until
from tests.scripted_origin import ScriptedOrigin
from tests.servers import ThreadServer, free_port
from tests.test_purge import AUTH, PATHS, TOKEN, Fleet, route_products, warm

URL = "redis+sentinel://:s%40cret@sentinel-a:26380,[::1],sentinel-c/cdn-master/3?sentinel_password=watch"


# -- the URL --------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_service_the_database_and_both_passwords() -> None:
    assert parse_sentinel_url(URL) == SentinelUrl(
        sentinels=(("sentinel-a", 26380), ("::1", 26379), ("sentinel-c", 26379)), service="cdn-master", db=3,
        username=None, password="s@cret", sentinel_password="watch")
    assert parse_sentinel_url("redis+sentinel://app:pw@10.0.0.5/cache") == SentinelUrl(
        sentinels=(("10.0.0.5", 26379),), service="cache", db=0, username="app", password="pw")


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://127.0.0.1:26379", "names no service"),
    ("redis+sentinel://127.0.0.1:26379/", "names no service"),
    ("redis+sentinel:///cdn-master", "names no Sentinel host"),
    ("redis+sentinel://a:26379,,b/cdn-master", "a Sentinel host is missing"),
    ("redis+sentinel://a:port/cdn-master", "'a:port' needs a port from 1 to 65535"),
    ("redis+sentinel://a:0/cdn-master", "'a:0' needs a port from 1 to 65535"),
    ("redis+sentinel://a:99999/cdn-master", "'a:99999' needs a port from 1 to 65535"),
    ("redis+sentinel://a/cdn-master/zero", "at most a database number, not 'zero'"),
    ("redis+sentinel://a/cdn-master/0/1", "at most a database number, not '0/1'"),
    ("redis+sentinel://a/cdn-master?password=x", "unknown parameter 'password'"),
    ("redis+sentinel://[::1/cdn-master", "Invalid IPv6 URL"),
])
def test_a_malformed_sentinel_url_is_refused_saying_what_is_wrong_and_the_form(url: str, says: str) -> None:
    with pytest.raises(ValueError, match="malformed Sentinel URL") as refused:
        check_redis_url(url)
    assert says in str(refused.value)
    assert "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]" in str(refused.value)


def test_a_plain_url_is_checked_by_redis_py_and_the_refusal_shows_both_forms() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://:pw@cache.example:6380/2", "unix:///run/redis.sock", ""):
        assert check_redis_url(url) == url
    with pytest.raises(ValueError, match=r"schemes .* and redis\+sentinel://"):
        check_redis_url("http://127.0.0.1:6379")


@pytest.mark.parametrize("settings", [EdgeSettings, PurgeApiSettings, OriginSettings, RouterSettings])
def test_every_service_refuses_a_malformed_redis_url_at_start_up(settings: type[ServiceSettings]) -> None:
    with pytest.raises(SettingsError, match=rf"{settings.section}\.redis: .*names no service"):
        load_settings(settings, overrides={"redis": "redis+sentinel://127.0.0.1:26379"}, environ={})
    assert load_settings(settings, overrides={"redis": URL}, environ={}).redis == URL


async def test_every_service_makes_its_redis_client_through_the_sentinels() -> None:
    clients = [RedisPurgeLog(URL).redis,  # the purge API, the edge's purge listener, the front door's registry
               FleetLimiter.from_url(URL, 0.05, clock=time.monotonic).redis,  # the edge's shield
               RedisDatabase(URL).redis]  # the origin
    for client in clients:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "cdn-master"
        assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "s@cret"
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["password"] for s in sentinels] == ["watch"] * 3
        await client.aclose()


# -- a real Sentinel group ------------------------------------------------------


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path, replicas=1, sentinels=3)
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture
def fleet(group: SentinelGroup) -> Iterator[Fleet]:
    """An origin, the purge API and two edges; the API and the edges know Redis only by the Sentinel URL."""
    servers: list[ThreadServer] = []
    try:
        origin = ScriptedOrigin()
        servers.append(ThreadServer(origin).__enter__())
        api = create_purge_api(PurgeApiSettings(redis=group.url(), token=TOKEN, live_after=1.5))
        servers.append(ThreadServer(api, port=free_port()).__enter__())
        edges = [create_edge(EdgeSettings(origin=servers[0].url, id=f"edge-{i}", redis=group.url(),
                                          heartbeat_interval=0.2, admin_token="admin"))
                 for i in range(2)]
        servers += [ThreadServer(edge, proxy=True).__enter__() for edge in edges]
        fleet = Fleet(group.master(), origin, servers[0].url, servers[1].url, edges, [s.url for s in servers[2:]])
        fleet.wait_for_live_edges(2)
        route_products(origin)
        warm(fleet, PATHS)
        yield fleet
        fleet.client.close()
    finally:
        for server in reversed(servers):
            server.__exit__(None, None, None)


def purged_everywhere(answer: httpx.Response) -> bool:
    body = answer.json()
    return answer.status_code == 200 and body["complete"] and set(body["applied"]) == {"edge-0", "edge-1"}


def served_from_cache(fleet: Fleet, path: str) -> list[bool]:
    return ["hit" in fleet.get(i, path).headers["cache-status"] for i in range(len(fleet.edges))]


def test_a_purge_reaches_every_edge_through_redis_found_by_sentinel(fleet: Fleet, group: SentinelGroup) -> None:
    answer = fleet.purge({"kind": "tag", "values": ["product-42"]})
    assert purged_everywhere(answer), answer.json()
    assert served_from_cache(fleet, "/api/products/42") == [False, False]
    assert served_from_cache(fleet, "/api/products/43") == [True, True]
    with redis.Redis(port=group.master().port, decode_responses=True) as master:
        assert master.xlen("cdn:purge-log") == 1


def fail_over(fleet: Fleet, group: SentinelGroup) -> redis.Redis:
    """Kill the master, wait for the Sentinels to promote the replica and for the edges to be live again."""
    old = group.master()
    old.kill()
    new = group.wait_for_failover(old)
    fleet.wait_for_live_edges(2, timeout=30)  # the API's /edges answers only once it reaches the new master
    return redis.Redis(port=new.port, decode_responses=True)


def test_after_a_failover_purges_are_logged_and_applied_and_no_cache_is_emptied(fleet: Fleet,
                                                                                group: SentinelGroup) -> None:
    before = fleet.purge({"kind": "tag", "values": ["product-43"]})
    assert purged_everywhere(before), before.json()
    with redis.Redis(port=group.master().port) as master:
        assert master.wait(1, 5000) == 1  # the replica has the whole log: this failover loses nothing
    with fail_over(fleet, group) as new_master:
        assert new_master.xlen("cdn:purge-log") == 1
        after = fleet.purge({"kind": "tag", "values": ["product-42"]})
        assert purged_everywhere(after), after.json()
        assert new_master.xlen("cdn:purge-log") == 2
    assert served_from_cache(fleet, "/api/products/42") == [False, False]
    assert served_from_cache(fleet, "/static/app.js") == [True, True]  # kept: nothing was missed
    status = fleet.client.get(f"{fleet.api_url}/purges/{before.json()['id']}", headers=AUTH)
    assert status.json()["complete"] and set(status.json()["applied"]) == {"edge-0", "edge-1"}
    assert [edge.counters.get("purge_log_flush") for edge in fleet.edges] == [None, None]


def test_edges_empty_their_caches_when_the_new_master_lacks_purges_they_applied(fleet: Fleet,
                                                                               group: SentinelGroup) -> None:
    for tag in ("product-43", "unrelated"):
        answer = fleet.purge({"kind": "tag", "values": [tag]})
        assert purged_everywhere(answer), answer.json()
    with fail_over(fleet, group) as new_master:
        # Replication is asynchronous: take the newest purge off the promoted replica, as if it
        # had never arrived there (the edges applied it from the old master).
        (newest, _), (previous, _) = new_master.xrevrange("cdn:purge-log", count=2)
        with new_master.pipeline(transaction=True) as lose:
            lose.xdel("cdn:purge-log", newest)
            lose.execute_command("XSETID", "cdn:purge-log", previous)
            lose.decr("cdn:purge-seq")
            lose.execute()
        after = fleet.purge({"kind": "tag", "values": ["product-42"]})
        assert purged_everywhere(after), after.json()
    # Each edge saw it had applied more purges than the log holds: it cannot know what else
    # differs, so it emptied its cache (at its next check, or on the next purge's number).
    assert [edge.counters.get("purge_log_flush", 0) >= 1 for edge in fleet.edges] == [True, True]
    assert served_from_cache(fleet, "/api/products/42") == [False, False]
    assert served_from_cache(fleet, "/static/app.js") == [False, False]


# -- a purge acknowledged only once replicas hold it ------------------------------------------


def test_with_replicas_required_a_purge_is_acknowledged_only_once_a_replica_holds_it(tmp_path: Path) -> None:
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(tmp_path / "replica", replica_of=master).start()

    def in_sync() -> bool:
        return master.info("replication").get("slave0", {}).get("state") == "online"

    wait_until(in_sync, 15, "the replica in sync")
    api = create_purge_api(PurgeApiSettings(redis=master.url, token=TOKEN, replicas=1, replica_timeout=1.0))
    try:
        with ThreadServer(api) as server, httpx.Client(timeout=10) as client:
            def purge(key: str) -> httpx.Response:
                return client.post(server.url + "/purges", json={"kind": "tag", "values": ["product-42"]},
                                   headers={**AUTH, "Idempotency-Key": key})

            first = purge("first")
            assert first.status_code == 202, first.text
            # A replica still connected but not answering: the master has the purge, no replica does.
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                lagging = purge("lagging")
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            assert lagging.status_code == 503, lagging.text
            assert "replica" in lagging.json()["error"] and lagging.json()["id"].startswith("p-")
            wait_until(in_sync, 15, "the replica answering again")
            retried = purge("lagging")
            assert retried.status_code == 202, retried.text
            assert retried.json()["id"] == lagging.json()["id"] and retried.json()["replayed"] is True
            replica.kill()
            assert purge("replica gone").status_code == 503
    finally:
        replica.kill()
        master.kill()
