"""Origin protection end to end: coalescing, stale serving, the origin pool and the shield tier."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from edge.app import Edge, create_app
from edge.settings import EdgeSettings
from purge_api.log import MemoryPurgeLog, Purge
from tests.scripted_origin import Answer, ScriptedOrigin
from tests.servers import ThreadServer, free_port

FRESH = [("Cache-Control", "max-age=3600")]


async def asgi_get(app: Edge, path: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, dict[str, str], bytes]:
    """One GET straight into the edge's ASGI interface (no sockets), as a client would see it."""
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"shop.example"), *headers], "client": ("127.0.0.1", 1), "http_version": "1.1"}
    started: dict[str, object] = {}
    body = bytearray()

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        else:
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    headers_out = {k.decode(): v.decode() for k, v in started["headers"]}  # type: ignore[union-attr]
    return started["status"], headers_out, bytes(body)  # type: ignore[return-value]


@pytest.fixture
def origin() -> Iterator[tuple[ScriptedOrigin, str]]:
    scripted = ScriptedOrigin()
    with ThreadServer(scripted) as server:
        yield scripted, server.url


# -- coalescing ---------------------------------------------------------------------


async def test_a_thousand_concurrent_misses_for_one_key_make_one_origin_request(origin: tuple[ScriptedOrigin, str]) -> None:
    scripted, url = origin
    scripted.route("/cold", Answer(headers=FRESH, body=b"x" * 2048, delay=0.5))
    edge = create_app(EdgeSettings(origin=url))
    await edge.start()
    try:
        answers = await asyncio.gather(*(asgi_get(edge, "/cold") for _ in range(1000)))
    finally:
        await edge.stop()
    assert all(status == 200 and body == b"x" * 2048 for status, _, body in answers)
    assert scripted.hits["/cold"] == 1
    assert sum("collapsed" in h["cache-status"] for _, h, _ in answers) == 999


async def test_waiters_are_released_when_the_response_is_not_storable(origin: tuple[ScriptedOrigin, str]) -> None:
    scripted, url = origin
    scripted.route("/private", Answer(headers=[("Cache-Control", "private")], delay=0.3))
    edge = create_app(EdgeSettings(origin=url))
    await edge.start()
    try:
        first = await asyncio.gather(*(asgi_get(edge, "/private") for _ in range(20)))
        started = time.monotonic()
        second = await asyncio.gather(*(asgi_get(edge, "/private") for _ in range(20)))
        elapsed = time.monotonic() - started
    finally:
        await edge.stop()
    assert all(status == 200 for status, _, _ in first + second)
    assert scripted.hits["/private"] == 40  # each got its own private answer
    assert edge.counters.get("coalesced_wait", 0) == 19  # only the first wave queued, once
    assert elapsed < 20 * 0.3  # hit-for-miss: the second wave ran side by side, not one after another


async def test_a_waiter_that_waits_past_the_timeout_fetches_on_its_own(origin: tuple[ScriptedOrigin, str]) -> None:
    scripted, url = origin
    scripted.route("/slow", Answer(headers=FRESH, delay=1.5))
    edge = create_app(EdgeSettings(origin=url, coalesce_timeout=0.2))
    await edge.start()
    try:
        answers = await asyncio.gather(asgi_get(edge, "/slow"), asgi_get(edge, "/slow"))
    finally:
        await edge.stop()
    assert [status for status, _, _ in answers] == [200, 200]
    assert scripted.hits["/slow"] == 2
    assert edge.counters["coalesce_timeout"] == 1


# -- stale serving -----------------------------------------------------------------


def test_stale_if_error_serves_stale_when_the_origin_is_stopped() -> None:
    scripted = ScriptedOrigin()
    scripted.route("/p", Answer(headers=[("Cache-Control", "max-age=1, stale-if-error=60")], body=b"kept"))
    port = free_port()
    edge = create_app(EdgeSettings(origin=f"http://127.0.0.1:{port}"))
    with ThreadServer(edge, proxy=True) as edge_server, httpx.Client(base_url=edge_server.url) as client:
        with ThreadServer(scripted, port=port):
            assert client.get("/p").text == "kept"
        time.sleep(1.1)
        response = client.get("/p")
    assert response.status_code == 200 and response.text == "kept"
    assert "detail=stale-if-error" in response.headers["cache-status"]


def test_grace_serves_stale_while_no_origin_is_healthy_and_503_without_it() -> None:
    scripted = ScriptedOrigin()
    scripted.route("/g", Answer(headers=[("Cache-Control", "max-age=1")], body=b"graced"))
    scripted.route("/healthz", Answer(body=b"ok"))
    port = free_port()
    pool = {"members": [f"http://127.0.0.1:{port}"], "health": {"interval": 0.1, "timeout": 0.5, "fall": 1, "rise": 1}}
    with_grace = create_app(EdgeSettings(pool=pool, stale_grace=60))
    without = create_app(EdgeSettings(pool=pool, id="edge-2"))
    origin_server = ThreadServer(scripted, port=port).__enter__()
    with ThreadServer(with_grace, proxy=True) as a, ThreadServer(without, proxy=True) as b, httpx.Client() as client:
        assert client.get(a.url + "/g").text == "graced"
        assert client.get(b.url + "/g").text == "graced"
        origin_server.__exit__(None, None, None)
        time.sleep(1.5)  # the origin is gone: health checks mark it down, the entries go stale
        graced = client.get(a.url + "/g")
        refused = client.get(b.url + "/g")
    assert graced.status_code == 200 and "detail=stale-grace-origin-down" in graced.headers["cache-status"]
    assert refused.status_code == 503
    assert "no healthy origin" in refused.text


# -- the origin pool ----------------------------------------------------------------


def test_a_refused_connection_is_retried_on_another_member() -> None:
    scripted = ScriptedOrigin()
    scripted.route("/r", Answer(headers=[("Cache-Control", "no-store")], body=b"answered"))
    dead = f"http://127.0.0.1:{free_port()}"
    with ThreadServer(scripted) as live:
        pool = {"members": [dead, live.url], "algorithm": "round_robin", "health": {"enabled": False}}
        edge = create_app(EdgeSettings(pool=pool, admin_token="t"))
        with ThreadServer(edge, proxy=True) as server, httpx.Client(base_url=server.url) as client:
            answers = [client.get("/r") for _ in range(6)]
            state = client.get("/_edge/pool", headers={"Authorization": "Bearer t"}).json()
    assert all(a.status_code == 200 and a.text == "answered" for a in answers)
    assert scripted.hits["/r"] == 6
    assert {m["url"] for m in state["origins"]["members"]} == {dead, live.url}


def test_no_member_available_gives_503_with_a_clear_body() -> None:
    pool = {"members": [f"http://127.0.0.1:{free_port()}"], "health": {"enabled": False},
            "passive": {"failures": 1, "backoff": 30, "max_backoff": 30}}
    edge = create_app(EdgeSettings(pool=pool))
    with ThreadServer(edge, proxy=True) as server, httpx.Client(base_url=server.url) as client:
        first = client.get("/x")
        second = client.get("/x")
    assert first.status_code == 502  # refused: the member is ejected
    assert second.status_code == 503
    assert "no healthy origin" in second.text


# -- the shield tier ----------------------------------------------------------------


def test_origin_sees_one_request_for_a_key_fetched_through_three_edges() -> None:
    scripted = ScriptedOrigin()
    scripted.route("/s", Answer(headers=FRESH + [("Surrogate-Key", "shielded")], body=b"once"))
    with ThreadServer(scripted) as origin_server:
        shield = create_app(EdgeSettings(origin=origin_server.url, id="shield"))
        with ThreadServer(shield, proxy=True) as shield_server:
            edges = [create_app(EdgeSettings(origin=origin_server.url, id=f"edge-{i}", parents=[shield_server.url]))
                     for i in range(3)]
            servers = [ThreadServer(e, proxy=True).__enter__() for e in edges]
            try:
                with httpx.Client() as client:
                    answers = [client.get(s.url + "/s", headers={"Host": "shop.example"}) for s in servers]
            finally:
                for s in servers:
                    s.__exit__(None, None, None)
    assert all(a.text == "once" for a in answers)
    assert scripted.hits["/s"] == 1
    assert all("surrogate-key" not in a.headers for a in answers)  # clients never see tags
    assert all(e.store.keys_for_tag("shielded") for e in edges)  # ...but each edge kept them to purge by


def test_a_forwarding_loop_between_edges_is_refused_with_508() -> None:
    port_a, port_b = free_port(), free_port()
    a = create_app(EdgeSettings(id="edge-a", parents=[f"http://127.0.0.1:{port_b}"], origin=f"http://127.0.0.1:{free_port()}"))
    b = create_app(EdgeSettings(id="edge-b", parents=[f"http://127.0.0.1:{port_a}"], origin=f"http://127.0.0.1:{free_port()}"))
    with ThreadServer(a, port=port_a, proxy=True), ThreadServer(b, port=port_b, proxy=True):
        response = httpx.get(f"http://127.0.0.1:{port_a}/loop", timeout=10)
    assert response.status_code == 508
    assert "loop detected" in response.text
    assert a.counters.get("loop_detected", 0) + b.counters.get("loop_detected", 0) >= 1


def test_an_edge_never_refills_from_a_shield_that_has_not_applied_its_purge() -> None:
    version = {"v": "old"}
    scripted = ScriptedOrigin()
    scripted.route("/item", lambda h: Answer(headers=FRESH + [("Surrogate-Key", "item")], body=version["v"].encode()))
    log = MemoryPurgeLog()
    with ThreadServer(scripted) as origin_server:
        shield = create_app(EdgeSettings(origin=origin_server.url, id="shield", heartbeat_interval=0.1), purge_log=log)
        with ThreadServer(shield, proxy=True) as shield_server:
            child = create_app(EdgeSettings(origin=origin_server.url, id="child", parents=[shield_server.url],
                                            heartbeat_interval=0.1), purge_log=log)
            with ThreadServer(child, proxy=True) as child_server, httpx.Client(base_url=child_server.url) as client:
                assert client.get("/item").text == "old"
                assert shield.store.keys_for_tag("item"), (shield.counters, child.counters)
                # The shield falls behind on the purge log; the child applies the purge at once.
                asyncio.run_coroutine_threadsafe(shield.listener.stop(), shield.loop).result(5)  # type: ignore[union-attr]
                version["v"] = "new"
                asyncio.run_coroutine_threadsafe(
                    log.append(Purge(id="p1", kind="tag", values=("item",), created_at=time.time())), child.loop).result(5)
                deadline = time.monotonic() + 5
                while child.store.keys_for_tag("item"):
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                refill = client.get("/item")
    assert refill.text == "new"  # not the shield's unpurged copy
    assert shield.counters.get("shield_bypass") == 1
