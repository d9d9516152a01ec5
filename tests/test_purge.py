"""The purge service end to end: a real redis-server, the purge API and three edges on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from edge.app import Edge, create_app as create_edge
from edge.settings import EdgeSettings
from origin_mock.app import create_app as create_origin
from origin_mock.settings import OriginSettings
from purge_api.app import create_app as create_purge_api
from purge_api.settings import PurgeApiSettings
from tests.redis_server import RedisServer
from tests.scripted_origin import Answer, ScriptedOrigin
from tests.servers import ThreadServer, free_port

TOKEN = "purge-secret"
READ_TOKEN = "read-only"
HOST = "shop.example"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Fleet:
    redis: RedisServer
    origin: ScriptedOrigin | None
    origin_url: str
    api_url: str
    edges: list[Edge]
    edge_urls: list[str]
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=15))

    def get(self, i: int, path: str, **headers: str) -> httpx.Response:
        return self.client.get(self.edge_urls[i] + path, headers={"Host": HOST, **headers})

    def purge(self, payload: dict, wait: float | None = 5, **headers: str) -> httpx.Response:
        params = {"wait": str(wait)} if wait is not None else {}
        return self.client.post(self.api_url + "/purges", json=payload, params=params, headers={**AUTH, **headers})

    def wait_for_live_edges(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            edges = self.client.get(self.api_url + "/edges", headers=AUTH).json().get("edges", [])
            if sum(e["live"] for e in edges) == count:
                return
            time.sleep(0.05)
        raise AssertionError(f"expected {count} live edges, registry says {edges}")


def start_fleet(tmp_path: Path, edges: int = 3, persistent: bool = False,
                origin_app: Callable[[str], object] | None = None, **api_settings: object) -> Iterator[Fleet]:
    """Redis, an origin (scripted, or `origin_app(purge_api_url)`), the purge API and `edges` edges."""
    redis = RedisServer(tmp_path, persistent=persistent).start()
    api_port = free_port()
    scripted = ScriptedOrigin() if origin_app is None else None
    servers: list[ThreadServer] = []
    try:
        origin_server = ThreadServer(origin_app(f"http://127.0.0.1:{api_port}") if origin_app else scripted).__enter__()
        servers.append(origin_server)
        api = create_purge_api(PurgeApiSettings(redis=redis.url, token=TOKEN, read_tokens=[READ_TOKEN],
                                                live_after=1.5, **api_settings))
        api_server = ThreadServer(api, port=api_port).__enter__()
        servers.append(api_server)
        apps = [create_edge(EdgeSettings(origin=origin_server.url, id=f"edge-{i}", region=f"r{i % 2}",
                                         redis=redis.url, heartbeat_interval=0.2, admin_token="admin"))
                for i in range(edges)]
        for app in apps:
            servers.append(ThreadServer(app, proxy=True).__enter__())
        fleet = Fleet(redis, scripted, origin_server.url, api_server.url, apps, [s.url for s in servers[2:]])
        fleet.wait_for_live_edges(edges)
        yield fleet
        fleet.client.close()
    finally:
        for server in reversed(servers):
            server.__exit__(None, None, None)
        redis.kill()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    yield from start_fleet(tmp_path)


def route_products(origin: ScriptedOrigin) -> None:
    for pid in (42, 43):
        origin.route(f"/api/products/{pid}", Answer(
            headers=[("Cache-Control", "max-age=600"), ("ETag", f'"p{pid}"'), ("Surrogate-Key", f"products product-{pid}")],
            body=f"product {pid}".encode()))
    origin.route("/static/app.js", Answer(headers=[("Cache-Control", "max-age=600")], body=b"js"))


def warm(fleet: Fleet, paths: list[str]) -> None:
    for i in range(len(fleet.edges)):
        for path in paths:
            fleet.get(i, path)
            assert "hit" in fleet.get(i, path).headers["cache-status"]


PATHS = ["/api/products/42", "/api/products/43", "/static/app.js"]


@pytest.mark.parametrize(("payload", "purged"), [
    ({"kind": "url", "values": [f"http://{HOST}/api/products/42"]}, {"/api/products/42"}),
    ({"kind": "prefix", "values": [f"http://{HOST}/api/"]}, {"/api/products/42", "/api/products/43"}),
    ({"kind": "tag", "values": ["product-43"]}, {"/api/products/43"}),
    ({"kind": "event", "event": "product.updated", "fields": {"id": 42}}, {"/api/products/42"}),
    ({"kind": "all"}, set(PATHS)),
])
def test_hard_purge_of_each_kind_reaches_every_edge(fleet: Fleet, payload: dict, purged: set[str]) -> None:
    assert fleet.origin is not None
    route_products(fleet.origin)
    warm(fleet, PATHS)
    answer = fleet.purge(payload).json()
    assert answer["complete"], answer
    assert set(answer["applied"]) == {"edge-0", "edge-1", "edge-2"}
    for i in range(3):
        for path in PATHS:
            status = fleet.get(i, path).headers["cache-status"]
            assert ("fwd=miss" in status) == (path in purged), (i, path, status)


def test_soft_purge_makes_every_edge_revalidate(fleet: Fleet) -> None:
    assert fleet.origin is not None
    route_products(fleet.origin)
    fleet.origin.route("/api/products/42", lambda h: Answer(304, [("ETag", '"p42"')], b"")
                       if h.get("if-none-match") == '"p42"' else
                       Answer(headers=[("Cache-Control", "max-age=600"), ("ETag", '"p42"'),
                                       ("Surrogate-Key", "product-42")], body=b"product 42"))
    warm(fleet, ["/api/products/42"])
    assert fleet.purge({"kind": "tag", "values": ["product-42"], "soft": True}).json()["complete"]
    for i in range(3):
        response = fleet.get(i, "/api/products/42")
        assert response.text == "product 42"
        assert "fwd=stale; fwd-status=304" in response.headers["cache-status"]


def test_status_lists_each_edge_with_the_time_it_applied_the_purge(fleet: Fleet) -> None:
    created = fleet.purge({"kind": "tag", "values": ["x"]}, wait=None)
    assert created.status_code == 202
    purge_id = created.json()["id"]
    status = fleet.client.get(f"{fleet.api_url}/purges/{purge_id}", params={"wait": "5"},
                              headers={"Authorization": f"Bearer {READ_TOKEN}"}).json()
    assert status["complete"] and status["pending"] == []
    for applied in status["applied"].values():
        assert applied["at"] >= status["created_at"]
        assert 0 <= applied["after_ms"] < 5000


def test_idempotency_key_returns_the_first_purge_instead_of_purging_twice(fleet: Fleet) -> None:
    first = fleet.purge({"kind": "tag", "values": ["a"]}, **{"Idempotency-Key": "k-1"}).json()
    again = fleet.purge({"kind": "tag", "values": ["a"]}, **{"Idempotency-Key": "k-1"}).json()
    other = fleet.purge({"kind": "tag", "values": ["a"]}, **{"Idempotency-Key": "k-2"}).json()
    assert again["id"] == first["id"] and again["replayed"] and not first["replayed"]
    assert other["id"] != first["id"]
    assert fleet.edges[0].counters.get("purges_applied") == 2


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"Authorization": "Bearer nope"}, 403),
    ({"Authorization": f"Bearer {READ_TOKEN}"}, 403),
    ({"Authorization": f"Basic {TOKEN}"}, 401),
])
def test_purging_needs_a_token_with_the_purge_scope(fleet: Fleet, headers: dict, status: int) -> None:
    response = fleet.client.post(fleet.api_url + "/purges", json={"kind": "all"}, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]
    assert fleet.edges[0].counters.get("purges_applied") is None


def test_token_in_the_query_string_is_not_accepted(fleet: Fleet) -> None:
    response = fleet.client.post(fleet.api_url + "/purges", params={"token": TOKEN}, json={"kind": "all"})
    assert response.status_code == 401


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"not json", 400, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 413, "over"),
    (b"[" * 5000 + b"]" * 5000, 400, "not valid JSON"),
    (b'{"kind": "everything"}', 422, "kind must be"),
    (b'{"kind": "tag"}', 422, "non-empty list"),
    (b'{"kind": "tag", "values": ["a b"]}', 422, "whitespace"),
    (b'{"kind": "tag", "values": ["a\\u0000b"]}', 422, "control characters"),
    (b'{"kind": "url", "values": ["/relative"]}', 422, "absolute"),
    (b'{"kind": "event", "event": "product.exploded", "fields": {}}', 422, "unknown event 'product.exploded'"),
    (b'{"kind": "event", "event": "product.updated", "fields": {}}', 422, "needs field 'id'"),
    (b'{"kind": "tag", "values": ["a"], "soft": "yes"}', 422, "soft"),
    (b'{"kind": "tag", "values": ["a"], "colour": 1}', 422, "unknown field 'colour'"),
])
def test_bad_purge_payloads_get_a_clear_error_and_purge_nothing(fleet: Fleet, body: bytes, status: int, says: str) -> None:
    response = fleet.client.post(fleet.api_url + "/purges", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == status
    assert says in response.json()["error"]
    assert fleet.edges[0].counters.get("purges_applied") is None


def test_thousands_of_tags_are_refused(fleet: Fleet) -> None:
    response = fleet.purge({"kind": "tag", "values": [f"t{i}" for i in range(3000)]})
    assert response.status_code == 422
    assert "at most 256" in response.json()["error"]


def test_an_edge_cut_off_from_the_log_catches_up_in_order(fleet: Fleet) -> None:
    assert fleet.origin is not None
    route_products(fleet.origin)
    warm(fleet, PATHS)
    listener = fleet.edges[0].listener
    assert listener is not None
    run_in_edge_loop(fleet, 0, listener.stop())
    time.sleep(1.7)  # its heartbeat goes stale: the API stops waiting for it
    answer = fleet.purge({"kind": "tag", "values": ["product-42"]}).json()
    assert answer["complete"] and "edge-0" not in answer["applied"]
    assert "hit" in fleet.get(0, "/api/products/42").headers["cache-status"]  # still serving what it holds
    run_in_edge_loop(fleet, 0, restart(listener))
    deadline = time.monotonic() + 5
    while "fwd=miss" not in fleet.get(0, "/api/products/42").headers["cache-status"]:
        assert time.monotonic() < deadline, "edge-0 did not catch up"
        time.sleep(0.05)
    assert fleet.edges[0].counters.get("purge_log_flush") is None
    assert "hit" in fleet.get(0, "/api/products/43").headers["cache-status"]


async def restart(listener: object) -> None:
    listener.start()  # type: ignore[attr-defined]


def run_in_edge_loop(fleet: Fleet, i: int, coro: object) -> None:
    """Run a coroutine on the event loop of edge i's server thread."""
    import asyncio

    loop = fleet.edges[i].loop  # type: ignore[attr-defined]
    asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)  # type: ignore[arg-type]


def test_api_says_503_when_redis_is_down_and_edges_keep_serving_hits(fleet: Fleet) -> None:
    assert fleet.origin is not None
    route_products(fleet.origin)
    warm(fleet, PATHS)
    fleet.redis.kill()
    response = fleet.purge({"kind": "all"})
    assert response.status_code == 503
    assert "not logged" in response.json()["error"]
    started = time.monotonic()
    for i in range(3):
        assert "hit" in fleet.get(i, "/api/products/42").headers["cache-status"]
    assert time.monotonic() - started < 2
    assert fleet.client.get(fleet.api_url + "/health").status_code == 503


def test_redis_restarted_with_persistence_edges_reconnect_and_catch_up(tmp_path: Path) -> None:
    for fleet in start_fleet(tmp_path, persistent=True):
        assert fleet.origin is not None
        route_products(fleet.origin)
        warm(fleet, PATHS)
        assert fleet.purge({"kind": "tag", "values": ["product-43"]}).json()["complete"]
        fleet.redis.stop()
        time.sleep(0.5)
        fleet.redis.start()
        fleet.wait_for_live_edges(3)
        answer = fleet.purge({"kind": "tag", "values": ["product-42"]}).json()
        assert answer["complete"], answer
        for i in range(3):
            assert "fwd=miss" in fleet.get(i, "/api/products/42").headers["cache-status"]
            assert "hit" in fleet.get(i, "/static/app.js").headers["cache-status"]  # nothing flushed
            assert fleet.edges[i].counters.get("purge_log_flush") is None


def test_redis_restarted_without_persistence_edges_empty_their_caches(fleet: Fleet) -> None:
    assert fleet.origin is not None
    route_products(fleet.origin)
    warm(fleet, PATHS)
    fleet.redis.kill()
    fleet.redis.wipe()
    fleet.redis.start()
    fleet.wait_for_live_edges(3)
    deadline = time.monotonic() + 5
    while any(fleet.edges[i].counters.get("purge_log_flush") != 1 for i in range(3)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for i in range(3):
        assert "fwd=miss" in fleet.get(i, "/static/app.js").headers["cache-status"]


def test_an_edge_that_finds_the_log_trimmed_past_it_empties_its_cache(tmp_path: Path) -> None:
    for fleet in start_fleet(tmp_path, edges=2, log_maxlen=100):
        assert fleet.origin is not None
        route_products(fleet.origin)
        warm(fleet, PATHS)
        listener = fleet.edges[0].listener
        assert listener is not None
        run_in_edge_loop(fleet, 0, listener.stop())
        for i in range(600):
            assert fleet.purge({"kind": "tag", "values": [f"other-{i}"]}, wait=None).status_code == 202
        run_in_edge_loop(fleet, 0, restart(listener))
        deadline = time.monotonic() + 5
        while fleet.edges[0].counters.get("purge_log_flush") != 1:
            assert time.monotonic() < deadline, "edge-0 did not notice the trimmed log"
            time.sleep(0.05)
        assert "fwd=miss" in fleet.get(0, "/static/app.js").headers["cache-status"]
        assert fleet.edges[1].counters.get("purge_log_flush") is None


def test_after_an_edge_acknowledges_a_purge_it_never_serves_the_older_version(tmp_path: Path) -> None:
    """Readers hammer one product through every edge while it is changed and purged in a loop."""
    def origin_app(api_url: str) -> object:
        return create_origin(OriginSettings(products=10, product_max_age=600, purge_api=api_url, purge_token=TOKEN))

    for fleet in start_fleet(tmp_path, origin_app=origin_app):
        reads: list[tuple[int, float, int]] = []  # edge, started at, version seen
        stop = threading.Event()

        def reader(i: int) -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    started = time.time()
                    response = client.get(fleet.edge_urls[i] + "/api/products/7", headers={"Host": HOST})
                    if response.status_code == 200:
                        reads.append((i, started, int(response.headers["x-content-version"])))

        threads = [threading.Thread(target=reader, args=(i % 3,)) for i in range(6)]
        for t in threads:
            t.start()
        acks: list[tuple[str, float, int]] = []  # edge, acknowledged at, version purged for
        try:
            for _ in range(15):
                changed = fleet.client.patch(fleet.origin_url + "/api/products/7", json={"price": 1.0})
                version = int(changed.headers["x-content-version"])
                status = fleet.client.get(f"{fleet.api_url}/purges/{changed.headers['x-purge-id']}",
                                          params={"wait": "5"}, headers=AUTH).json()
                assert status["complete"], status
                acks += [(edge, applied["at"], version) for edge, applied in status["applied"].items()]
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join()
        stale = [(edge, version, seen) for edge, at, version in acks
                 for i, started, seen in reads if f"edge-{i}" == edge and started > at and seen < version]
        assert stale == []
        assert len(reads) > 100
        assert len(acks) == 15 * 3


def test_cdn_purge_command_prints_each_edge_and_exits_0_only_when_all_applied(fleet: Fleet) -> None:
    import subprocess
    import sys

    from tests.servers import ROOT

    def cdn_purge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cdn", "purge", *args, "--api", fleet.api_url],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    done = cdn_purge("event", "product.updated", "id=42", "--token", TOKEN, "--wait", "5")
    assert done.returncode == 0, done.stderr
    assert all(f"edge-{i}" in done.stdout for i in range(3))
    assert "complete" in done.stdout
    refused = cdn_purge("tag", "x", "--token", "wrong")
    assert refused.returncode == 2
    assert "403" in refused.stderr
    missing_field = cdn_purge("event", "product.updated", "--token", TOKEN)
    assert missing_field.returncode == 2
    assert "needs field 'id'" in missing_field.stderr
