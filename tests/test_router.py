"""The front door: placing clients, choosing regions and edges, failing over, and proxying faithfully."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.discovery import RegistryWatcher, live_edges, merge_edges
from balancer.geo import REGIONS, Coordinates, parse_coordinates
from balancer.placement import CidrTable, PlacedBy, normalise_region
from balancer.router import FrontDoor, create_app
from balancer.router_settings import FrontEdge, RouterSettings
from cdn.config import SettingsError, load_settings
from edge.app import create_app as create_edge
from edge.settings import EdgeSettings
from purge_api.log import EdgeInfo, MemoryPurgeLog
from tests.redis_server import RedisServer
from tests.scripted_origin import Answer, ScriptedOrigin
from tests.servers import ThreadServer, cdn_process, free_port

HOST = "shop.example"
DUBLIN, VIRGINIA, SINGAPORE = REGIONS["eu-west"], REGIONS["us-east"], REGIONS["ap-southeast"]
EDGES = [
    {"url": "http://eu-1.test", "id": "eu-1", "region": "eu-west"},
    {"url": "http://eu-2.test", "id": "eu-2", "region": "eu-west"},
    {"url": "http://us-1.test", "id": "us-1", "region": "us-east"},
    {"url": "http://ap-1.test", "id": "ap-1", "region": "ap-southeast"},
]
CIDRS = {"10.1.0.0/16": "eu-west", "10.1.2.0/24": "ap-southeast", "10.2.0.0/16": "us-east", "2001:db8::/32": "ap-northeast"}
FAST_HEALTH = {"health_interval": 0.1, "health_timeout": 0.5, "health_rise": 2, "health_fall": 2}


async def unstarted(edges: list[Any] = EDGES, **overrides: Any) -> FrontDoor:
    """A front door with its edges set but nothing started: no health checks, no sockets."""
    door = create_app(RouterSettings(edges=edges, **overrides))
    await door.fleet.set_edges(door.settings.edges)
    return door


def routed(response: httpx.Response) -> dict[str, str]:
    """X-Routed-To as a dict: {"edge": id, "region": ..., "distance_km": ..., "placed": ...}."""
    edge, *params = [part.strip() for part in response.headers["x-routed-to"].split(";")]
    return {"edge": edge, **dict(param.split("=", 1) for param in params)}


def eventually(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll until `condition()` holds; generous, since the machine is shared and noisy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not hold within {timeout}s")


async def asgi_request(app: FrontDoor, method: str = "GET", path: str = "/", headers: list[tuple[str, str]] = (),
                       client: str = "127.0.0.1", body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request straight into the front door's ASGI interface (no sockets on the client side)."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if body:
        raw.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": raw, "client": (client, 1234), "http_version": "1.1"}
    started: dict[str, Any] = {}
    out = bytearray()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        else:
            out.extend(message.get("body", b""))

    await app(scope, receive, send)
    return started["status"], {k.decode(): v.decode() for k, v in started["headers"]}, bytes(out)


# -- placement ------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "address", "placed_by", "region"), [
    ({"geo": "53.3,-6.2"}, "10.2.0.1", PlacedBy.GEO_HEADER, None),
    ({"region": "ap-southeast"}, "10.2.0.1", PlacedBy.REGION_HEADER, "ap-southeast"),
    ({"region": " EU-West "}, "", PlacedBy.REGION_HEADER, "eu-west"),
    ({"geo": "1,2", "region": "us-east"}, "", PlacedBy.GEO_HEADER, None),  # coordinates are the more precise
    ({}, "10.1.9.9", PlacedBy.CIDR, "eu-west"),
    ({}, "10.1.2.3", PlacedBy.CIDR, "ap-southeast"),  # the longest prefix wins
    ({}, "10.2.255.255", PlacedBy.CIDR, "us-east"),
    ({}, "2001:db8:1::5", PlacedBy.CIDR, "ap-northeast"),
    ({}, "::ffff:10.2.0.7", PlacedBy.CIDR, "us-east"),  # IPv4-mapped IPv6
    ({}, "192.0.2.1", PlacedBy.DEFAULT, "us-west"),
    ({}, "", PlacedBy.DEFAULT, "us-west"),
])
async def test_client_is_placed_by_geo_then_region_then_cidr_then_default(
        headers: dict[str, str], address: str, placed_by: PlacedBy, region: str | None) -> None:
    door = await unstarted(cidr_regions=CIDRS, default_region="us-west")
    placement = door.place(headers.get("geo"), headers.get("region"), address)
    assert placement.placed_by is placed_by
    assert placement.region == region
    if region is not None:
        assert placement.location == REGIONS[region]


BAD_GEO = ["", "abc", "53.3", "53.3,-6.2,7", "53.3;-6.2", "91,0", "0,181", "-90.1,0", "nan,0", "0,NaN", "inf,1",
           "1e2,3", "0x1,0", " , ", "53.3,-6.2\x00", "5" * 500 + ",1"]
BAD_REGION = ["", "mars-north", "eu_west", "eu-west-9", "\x00", "r" * 500, "eu-west, us-east"]


@pytest.mark.parametrize("geo", BAD_GEO)
@pytest.mark.parametrize(("address", "falls_to"), [("10.1.0.1", PlacedBy.CIDR), ("192.0.2.1", PlacedBy.DEFAULT)])
async def test_malformed_geo_header_falls_back_to_cidr_then_default(geo: str, address: str, falls_to: PlacedBy) -> None:
    door = await unstarted(cidr_regions=CIDRS, default_region="us-west")
    assert door.place(geo, None, address).placed_by is falls_to


@pytest.mark.parametrize("region", BAD_REGION)
@pytest.mark.parametrize(("address", "falls_to"), [("10.1.0.1", PlacedBy.CIDR), ("not-an-address", PlacedBy.DEFAULT)])
async def test_unknown_region_header_falls_back_to_cidr_then_default(region: str, address: str, falls_to: PlacedBy) -> None:
    door = await unstarted(cidr_regions=CIDRS, default_region="us-west")
    assert door.place(None, region, address).placed_by is falls_to


async def test_a_client_nothing_places_is_unplaced_and_still_served() -> None:
    door = await unstarted()
    placement = door.place("garbage", "nowhere", "192.0.2.1")
    assert placement.placed_by is PlacedBy.UNPLACED and placement.location is None
    route = door.choose(placement, "shop.example/")
    assert route is not None and route.distance_km is None


@pytest.fixture(scope="module")
def placing_door() -> FrontDoor:
    return asyncio.run(unstarted(cidr_regions=CIDRS, default_region="us-west"))


latin1_text = st.text(st.characters(max_codepoint=255), max_size=40)


@settings(max_examples=300, deadline=None)
@given(geo=st.one_of(st.none(), latin1_text, st.from_regex(r"-?[0-9]{1,3}(\.[0-9]+)?,-?[0-9]{1,3}(\.[0-9]+)?", fullmatch=True)),
       region=st.one_of(st.none(), latin1_text, st.sampled_from(sorted(REGIONS))),
       address=st.one_of(st.none(), latin1_text, st.ip_addresses().map(str)))
def test_any_location_headers_place_the_client_or_fall_back_cleanly(
        placing_door: FrontDoor, geo: str | None, region: str | None, address: str | None) -> None:
    placement = placing_door.place(geo, region, address)
    if geo is not None and parse_coordinates(geo) is not None:
        assert placement.placed_by is PlacedBy.GEO_HEADER
    elif region is not None and normalise_region(region) in placing_door.fleet.locations:
        assert placement.placed_by is PlacedBy.REGION_HEADER
    else:
        assert placement == placing_door.place(None, None, address)
        assert placement.placed_by in (PlacedBy.CIDR, PlacedBy.DEFAULT)


# Through a real server: field values with control characters never reach the front door.
@pytest.mark.parametrize(("geo", "region"), [(g, None) for g in BAD_GEO if g.isprintable()]
                         + [(None, r) for r in BAD_REGION if r.isprintable()])
async def test_bad_location_headers_through_the_proxy_get_the_default_region(
        fake_edge: tuple[ScriptedOrigin, str], geo: str | None, region: str | None) -> None:
    scripted, edge_url = fake_edge
    scripted.route("/", Answer(body=b"ok"))
    door = create_app(RouterSettings(edges=[{"url": f"http://127.0.0.1:{free_port()}", "region": "eu-west"},
                                            {"url": edge_url, "id": "us-1", "region": "us-east"}],
                                     default_region="us-east", health_interval=60))
    headers = [("host", HOST)] + ([("x-client-geo", geo)] if geo is not None else []) \
        + ([("x-client-region", region)] if region is not None else [])
    await door.start()
    try:
        status, headers_out, body = await asgi_request(door, headers=headers)
    finally:
        await door.stop()
    assert status == 200 and body == b"ok"
    assert headers_out["x-routed-to"] == "us-1; region=us-east; distance_km=0; rtt_ms=1.0; placed=default"


def test_cidr_table_matches_the_longest_prefix_and_ignores_what_is_not_an_address() -> None:
    table = CidrTable({"0.0.0.0/0": "anywhere", "10.0.0.0/8": "ten", "10.9.0.0/16": "ten-nine", "10.9.8.7/32": "host",
                       "fd00::/8": "ula"})
    assert table.region_of("11.0.0.1") == "anywhere"
    assert table.region_of("10.1.1.1") == "ten"
    assert table.region_of("10.9.1.1") == "ten-nine"
    assert table.region_of("10.9.8.7") == "host"
    assert table.region_of("fd12::1") == "ula"
    assert table.region_of("fe80::1%eth0") is None
    for nonsense in ("", "testclient", "10.0.0", "10.0.0.0/8", "::g"):
        assert table.region_of(nonsense) is None


# -- choosing a region and an edge -------------------------------------------------------


@pytest.mark.parametrize(("client", "region"), [
    (Coordinates(51.5, -0.12), "eu-west"),  # London
    (Coordinates(52.52, 13.40), "eu-west"),  # Berlin: Dublin is nearer than Virginia
    (Coordinates(40.71, -74.0), "us-east"),  # New York
    (Coordinates(37.77, -122.42), "us-east"),  # San Francisco: the only American region
    (Coordinates(-23.55, -46.63), "us-east"),  # São Paulo
    (Coordinates(35.68, 139.69), "ap-southeast"),  # Tokyo
    (Coordinates(-33.87, 151.21), "ap-southeast"),  # Sydney
    (Coordinates(28.61, 77.21), "ap-southeast"),  # Delhi
    (Coordinates(41.01, 28.98), "eu-west"),  # Istanbul
])
async def test_nearest_region_with_edges_is_chosen(client: Coordinates, region: str) -> None:
    door = await unstarted()
    ranked = door.fleet.ranked_regions(client)
    assert [km for _, km in ranked] == sorted(km for _, km in ranked)  # type: ignore[type-var]
    route = door.choose(door.place(f"{client.latitude},{client.longitude}", None, None), f"{HOST}/x")
    assert route is not None and route.region == region
    assert route.distance_km == pytest.approx(ranked[0][1])


async def test_edge_coordinates_place_their_region_and_regions_without_a_location_come_last() -> None:
    door = await unstarted([
        {"url": "http://a.test", "region": "lab-north", "latitude": 60.17, "longitude": 24.94},  # Helsinki
        {"url": "http://b.test", "region": "eu-west"},
        {"url": "http://c.test", "region": "basement"},
    ])
    assert door.fleet.locations["lab-north"] == Coordinates(60.17, 24.94)
    ranked = [region for region, _ in door.fleet.ranked_regions(Coordinates(59.33, 18.07))]  # Stockholm
    assert ranked == ["lab-north", "eu-west", "basement"]
    # A region an edge names can place clients too.
    assert door.place(None, "lab-north", None).location == Coordinates(60.17, 24.94)


async def test_region_without_available_edge_fails_over_to_the_next_nearest() -> None:
    door = await unstarted()
    london = door.place("51.5,-0.12", None, None)
    for member in door.fleet.pools["eu-west"].members:
        member.health.healthy = False
    route = door.choose(london, f"{HOST}/x")
    assert route is not None and route.region == "us-east"
    door.fleet.pools["us-east"].members[0].health.healthy = False
    route = door.choose(london, f"{HOST}/x")
    assert route is not None and route.region == "ap-southeast"
    door.fleet.pools["ap-southeast"].members[0].health.healthy = False
    assert door.choose(london, f"{HOST}/x") is None
    door.fleet.pools["eu-west"].members[1].health.healthy = True
    route = door.choose(london, f"{HOST}/x")
    assert route is not None and route.edge.id == "eu-2"


KEYS = [f"{HOST}/static/{i}.css?v={i % 7}" for i in range(10_000)]


def one_region(n: int) -> list[dict[str, str]]:
    return [{"url": f"http://edge-{i}.test", "id": f"edge-{i}", "region": "eu-west"} for i in range(n)]


async def choices(door: FrontDoor) -> dict[str, str]:
    placement = door.place(None, "eu-west", None)
    return {key: door.choose(placement, key).edge.id for key in KEYS}  # type: ignore[union-attr]


@pytest.mark.parametrize("n", [3, 5, 8])
async def test_an_edge_joining_a_region_moves_about_one_nth_of_keys(n: int) -> None:
    door = await unstarted(one_region(n - 1))
    before = await choices(door)
    await door.fleet.set_edges(RouterSettings(edges=one_region(n)).edges)
    after = await choices(door)
    kept = sum(before[key] == after[key] for key in KEYS) / len(KEYS)
    assert kept == pytest.approx(1 - 1 / n, abs=0.05)
    assert {after[key] for key in KEYS if before[key] != after[key]} == {f"edge-{n - 1}"}


@pytest.mark.parametrize("n", [3, 5, 8])
async def test_an_edge_leaving_a_region_moves_only_its_own_keys(n: int) -> None:
    door = await unstarted(one_region(n))
    before = await choices(door)
    await door.fleet.set_edges(RouterSettings(edges=one_region(n)[1:]).edges)
    after = await choices(door)
    kept = sum(before[key] == after[key] for key in KEYS) / len(KEYS)
    assert kept == pytest.approx(1 - 1 / n, abs=0.05)
    assert {before[key] for key in KEYS if before[key] != after[key]} == {"edge-0"}


async def test_an_unhealthy_edge_hands_its_keys_to_the_others_and_gets_them_back() -> None:
    door = await unstarted(one_region(4))
    before = await choices(door)
    door.fleet.pools["eu-west"].members[2].health.healthy = False
    during = await choices(door)
    assert all(during[k] == before[k] for k in KEYS if before[k] != "edge-2")
    assert "edge-2" not in set(during.values())
    door.fleet.pools["eu-west"].members[2].health.healthy = True
    assert await choices(door) == before


async def test_a_regions_edges_split_its_keys_by_weight() -> None:
    door = await unstarted([*one_region(3), {"url": "http://big.test", "id": "big", "region": "eu-west", "weight": 3}])
    shares = Counter((await choices(door)).values())
    for small in ("edge-0", "edge-1", "edge-2"):
        assert shares[small] / len(KEYS) == pytest.approx(1 / 6, abs=0.04)
    assert shares["big"] / len(KEYS) == pytest.approx(3 / 6, abs=0.05)


async def test_two_front_doors_agree_on_every_keys_edge() -> None:
    first, second = await unstarted(one_region(5)), await unstarted(list(reversed(one_region(5))))
    assert await choices(first) == await choices(second)


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "named"), [
    ({"edges": [{"url": "ftp://x"}]}, "router.edges.0.url"),
    ({"edges": [{"url": "http://a", "latitude": 1}]}, "both latitude and longitude"),
    ({"edges": ["http://a", "http://a"]}, "unique"),
    ({"edges": [{"url": "http://a", "id": "x"}, {"url": "http://b", "id": "x"}]}, "unique"),
    ({"regions": {"moon": [100, 0]}}, "router.regions"),
    ({"regions": {"void": ["nan", 0]}}, "router.regions"),
    ({"cidr_regions": {"10.0.0.0/33": "eu-west"}}, "not an address block"),
    ({"port": 70000}, "router.port"),
])
def test_invalid_router_settings_name_the_setting(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings(RouterSettings, None, overrides, environ={})


def test_edges_come_from_the_environment_as_json_and_bare_urls_are_edges_too() -> None:
    settings = load_settings(RouterSettings, None, None, environ={
        "CDN_ROUTER_EDGES": '["http://127.0.0.1:8080/", {"url": "http://10.0.0.2:8080", "region": "EU-West"}]',
        "CDN_ROUTER_REGIONS": '{"Lab": [1.5, 2.5]}'})
    assert settings.edges[0] == FrontEdge(url="http://127.0.0.1:8080", id="127.0.0.1:8080", region="local")
    assert settings.edges[1].region == "eu-west" and settings.edges[1].id == "10.0.0.2:8080"
    assert settings.regions == {"lab": (1.5, 2.5)}


# -- the edge registry --------------------------------------------------------------------


def test_only_live_registered_edges_with_an_address_are_used() -> None:
    now = 1000.0
    registered = [
        EdgeInfo("eu-1", "eu-west", "http://10.0.0.1:8080", 53.3, -6.2, heartbeat_at=now - 1),
        EdgeInfo("eu-2", "eu-west", "http://10.0.0.2:8080", heartbeat_at=now - 10),  # silent too long
        EdgeInfo("odd", "eu-west", "not a url", heartbeat_at=now),
        EdgeInfo("us-1", "", "http://10.0.0.3:8080", heartbeat_at=now),
    ]
    edges = live_edges(registered, now, live_after=5)
    assert [(e.id, e.region, e.latitude) for e in edges] == [("eu-1", "eu-west", 53.3), ("us-1", "local", None)]


def test_configured_edges_win_over_registered_ones() -> None:
    static = [FrontEdge(url="http://a:1", id="a", region="eu-west")]
    found = [FrontEdge(url="http://a:1", id="a2", region="us-east"), FrontEdge(url="http://z:1", id="a"),
             FrontEdge(url="http://b:1", id="b")]
    assert [e.id for e in merge_edges(static, found)] == ["a", "b"]


async def test_registry_watcher_follows_heartbeats_and_keeps_edges_while_the_registry_is_away() -> None:
    registry = MemoryPurgeLog()
    door = create_app(RouterSettings(), purge_log=registry)
    now = [1000.0]
    watcher = RegistryWatcher(registry, door.fleet, [], live_after=5, interval=0.05, clock=lambda: now[0])
    await registry.heartbeat(EdgeInfo("eu-1", "eu-west", "http://eu-1.test", heartbeat_at=999.0))
    await registry.heartbeat(EdgeInfo("us-1", "us-east", "http://us-1.test", heartbeat_at=999.0))
    await watcher.refresh()
    assert set(door.fleet.pools) == {"eu-west", "us-east"}
    now[0] = 1004.5
    await registry.heartbeat(EdgeInfo("us-1", "us-east", "http://us-1.test", heartbeat_at=1004.0))
    await watcher.refresh()
    assert set(door.fleet.pools) == {"us-east"}

    async def unreachable() -> list[EdgeInfo]:
        from purge_api.log import LogUnavailable
        raise LogUnavailable("redis: gone")

    registry.edges = unreachable  # type: ignore[method-assign]
    watcher.start()
    try:
        async with asyncio.timeout(10):
            while watcher.failures < 2:
                await asyncio.sleep(0.02)
    finally:
        await watcher.stop()
    assert watcher.failures >= 2 and watcher.reachable is False
    assert set(door.fleet.pools) == {"us-east"}


# -- proxying (a scripted edge records what arrives) -----------------------------------------


@pytest.fixture
def fake_edge() -> Iterator[tuple[ScriptedOrigin, str]]:
    scripted = ScriptedOrigin()
    scripted.route("/_edge/health", Answer(body=b'{"status": "ok"}'))
    with ThreadServer(scripted) as server:
        yield scripted, server.url


@pytest.fixture
def router_for(request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Start a front door over the given edges (dicts or URLs) on loopback; returns its URL."""
    servers: list[ThreadServer] = []

    def start(edges: list[Any], purge_log: MemoryPurgeLog | None = None, **overrides: Any) -> str:
        door = create_app(RouterSettings(edges=edges, **overrides), purge_log=purge_log)
        server = ThreadServer(door, proxy=True).__enter__()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def test_router_keeps_host_adds_forwarded_for_and_via_and_drops_hop_by_hop_fields(
        fake_edge: tuple[ScriptedOrigin, str], router_for: Callable[..., str]) -> None:
    scripted, edge_url = fake_edge
    scripted.route("/api/x", Answer(headers=[("Cache-Control", "max-age=60"), ("Keep-Alive", "timeout=5"),
                                             ("Connection", "X-Edge-Private"), ("X-Edge-Private", "1"),
                                             ("X-Kept", "yes")], body=b"payload"))
    url = router_for([{"url": edge_url, "id": "eu-1", "region": "eu-west"}])
    response = httpx.get(url + "/api/x?q=1", headers={
        "Host": "Shop.Example:8443", "Via": "1.1 corporate-proxy",
        "Connection": "X-Secret", "X-Secret": "hop", "Keep-Alive": "timeout=9", "TE": "trailers",
        "Proxy-Authorization": "Basic eA==", "Accept": "text/html", "X-Client-Region": "eu-west"})
    assert response.status_code == 200 and response.content == b"payload"
    [(method, target, seen)] = [r for r in scripted.requests if r[1].startswith("/api/")]
    assert (method, target) == ("GET", "/api/x?q=1")
    assert seen["host"] == "Shop.Example:8443"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["via"] == "1.1 corporate-proxy, 1.1 router"
    assert seen["accept"] == "text/html" and seen["x-client-region"] == "eu-west"
    for hop in ("x-secret", "keep-alive", "te", "proxy-authorization"):
        assert hop not in seen
    assert response.headers["x-kept"] == "yes" and response.headers["cache-control"] == "max-age=60"
    assert "keep-alive" not in response.headers and "x-edge-private" not in response.headers
    assert response.headers["via"] == "1.1 router"
    assert routed(response) == {"edge": "eu-1", "region": "eu-west", "distance_km": "0", "rtt_ms": "1.0",
                                "placed": "region-header"}


async def test_router_appends_the_peer_to_forwarded_for(fake_edge: tuple[ScriptedOrigin, str]) -> None:
    # In process: uvicorn, when a loopback peer sends X-Forwarded-For, puts the forwarded address in the scope.
    scripted, edge_url = fake_edge
    door = create_app(RouterSettings(edges=[edge_url], health_interval=60))
    await door.start()
    try:
        await asgi_request(door, headers=[("host", HOST), ("x-forwarded-for", "203.0.113.9, 10.0.0.1")],
                           client="198.51.100.7")
    finally:
        await door.stop()
    [(_, _, seen)] = [r for r in scripted.requests if r[1] == "/"]
    assert seen["x-forwarded-for"] == "203.0.113.9, 10.0.0.1, 198.51.100.7"


def test_router_streams_a_large_response_without_buffering_it(router_for: Callable[..., str]) -> None:
    first_chunk_arrived = threading.Event()
    chunk = b"x" * (256 * 1024)
    chunks = 32  # 8 MiB

    async def slow_edge(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(chunk) * chunks).encode())]})
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        # The rest is held back until the client saw the start: a buffering proxy would wait forever.
        released = await asyncio.to_thread(first_chunk_arrived.wait, 30)
        for i in range(1, chunks):
            await send({"type": "http.response.body", "body": chunk if released else b"", "more_body": i < chunks - 1})

    with ThreadServer(slow_edge) as edge:
        url = router_for([edge.url], health_interval=60)
        received = 0
        with httpx.stream("GET", url + "/big", headers={"Host": HOST}, timeout=60) as response:
            assert response.status_code == 200
            for piece in response.iter_raw():
                received += len(piece)
                first_chunk_arrived.set()
        assert received == len(chunk) * chunks


def test_router_streams_a_large_request_body(router_for: Callable[..., str]) -> None:
    received: list[bytes] = []

    async def upload_edge(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["path"] == "/upload":
            received.append(dict(scope["headers"]).get(b"transfer-encoding", b""))
        body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    piece = bytes(range(256)) * 4096  # 1 MiB

    def upload() -> Iterator[bytes]:
        for _ in range(12):
            yield piece

    with ThreadServer(upload_edge) as edge:
        url = router_for([edge.url], health_interval=60)
        chunked = httpx.post(url + "/upload", content=upload(), headers={"Host": HOST}, timeout=60)
        sized = httpx.put(url + "/upload", content=piece * 3, headers={"Host": HOST}, timeout=60)
    assert chunked.status_code == 201
    assert chunked.json() == {"size": 12 * len(piece), "sha256": hashlib.sha256(piece * 12).hexdigest()}
    assert sized.json() == {"size": 3 * len(piece), "sha256": hashlib.sha256(piece * 3).hexdigest()}
    assert received == [b"chunked", b""]  # a body of unknown length stays chunked; a sized one keeps its length


def test_router_retries_an_idempotent_request_on_another_edge_when_one_is_down(
        fake_edge: tuple[ScriptedOrigin, str], router_for: Callable[..., str]) -> None:
    scripted, live_url = fake_edge
    scripted.route("/k", Answer(body=b"from the live edge"))
    dead = f"http://127.0.0.1:{free_port()}"
    # Checks too slow to notice: the request itself meets the refused connection.
    url = router_for([{"url": dead, "id": "dead", "region": "eu-west"}, {"url": live_url, "id": "live", "region": "eu-west"}],
                     health_interval=60, health_fall=10)
    with httpx.Client(base_url=url, headers={"Host": HOST}) as client:
        answers = [client.get(f"/k?n={i}") for i in range(40)]
        health = client.get("/_router/health").json()
    assert all(a.status_code == 200 and a.content == b"from the live edge" for a in answers)
    assert {routed(a)["edge"] for a in answers} == {"live"}
    assert health["counters"]["edge_connect_failed"] >= 1  # some keys hashed to the dead edge, and were retried
    assert health["counters"]["retried"] == health["counters"]["edge_connect_failed"]


def test_router_moves_a_request_to_the_next_region_when_the_nearest_refuses_it(
        fake_edge: tuple[ScriptedOrigin, str], router_for: Callable[..., str]) -> None:
    scripted, live_url = fake_edge
    scripted.route("/k", Answer(body=b"from far away"))
    url = router_for([{"url": f"http://127.0.0.1:{free_port()}", "id": "eu-1", "region": "eu-west"},
                      {"url": f"http://127.0.0.1:{free_port()}", "id": "eu-2", "region": "eu-west"},
                      {"url": live_url, "id": "us-1", "region": "us-east"}], health_interval=60, health_fall=10)
    response = httpx.get(url + "/k", headers={"Host": HOST, "X-Client-Region": "eu-west"})
    assert response.status_code == 200 and response.content == b"from far away"
    assert routed(response)["region"] == "us-east"


def test_a_refused_post_is_not_sent_to_another_edge(fake_edge: tuple[ScriptedOrigin, str],
                                                    router_for: Callable[..., str]) -> None:
    scripted, live_url = fake_edge
    url = router_for([{"url": f"http://127.0.0.1:{free_port()}", "id": "dead", "region": "eu-west"},
                      {"url": live_url, "id": "live", "region": "us-east"}], health_interval=60, health_fall=10)
    response = httpx.post(url + "/orders", content=b"{}", headers={"Host": HOST, "X-Client-Region": "eu-west"})
    assert response.status_code == 502
    assert response.text == "edge dead (eu-west) refused the connection\n"
    assert not any(method == "POST" for method, _, _ in scripted.requests)


def test_503_with_a_clear_body_when_no_edge_anywhere_is_healthy(router_for: Callable[..., str]) -> None:
    url = router_for([{"url": f"http://127.0.0.1:{free_port()}", "id": "eu-1", "region": "eu-west"},
                      {"url": f"http://127.0.0.1:{free_port()}", "id": "us-1", "region": "us-east"}], **FAST_HEALTH)
    with httpx.Client(base_url=url, headers={"Host": HOST}) as client:
        eventually(lambda: client.get("/_router/health").status_code == 503, what="every edge marked down")
        response = client.get("/anything")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1" and response.headers["cache-control"] == "no-store"
    assert response.text == "no healthy edge in any region (eu-west: 0 of 1 available, us-east: 0 of 1 available)\n"


def test_503_names_the_missing_configuration_when_no_edge_is_known(router_for: Callable[..., str]) -> None:
    response = httpx.get(router_for([]) + "/", headers={"Host": HOST})
    assert response.status_code == 503
    assert "knows no edges" in response.text and "`edges`" in response.text and "`redis`" in response.text


def test_requests_without_one_host_or_that_looped_are_refused(fake_edge: tuple[ScriptedOrigin, str],
                                                              router_for: Callable[..., str]) -> None:
    _, edge_url = fake_edge
    url = router_for([edge_url], health_interval=60)
    looped = httpx.get(url + "/", headers={"Host": HOST, "Via": "1.0 cache-a, 1.1 router"})
    assert looped.status_code == 508 and "loop" in looped.text
    with httpx.Client() as client:
        request = client.build_request("GET", url + "/")
        request.headers["host"] = ""
        assert client.send(request).status_code == 400


def test_admin_edges_needs_the_token(fake_edge: tuple[ScriptedOrigin, str], router_for: Callable[..., str]) -> None:
    _, edge_url = fake_edge
    url = router_for([{"url": edge_url, "id": "eu-1", "region": "eu-west"}], admin_token="secret", health_interval=60)
    assert httpx.get(url + "/_router/edges").status_code == 401
    assert httpx.get(url + "/_router/edges", headers={"Authorization": "Bearer nope"}).status_code == 403
    state = httpx.get(url + "/_router/edges", headers={"Authorization": "Bearer secret"}).json()
    assert state["regions"]["eu-west"]["members"][0]["id"] == "eu-1"
    assert state["regions"]["eu-west"]["location"] == list(DUBLIN)


# -- failover with real edges ------------------------------------------------------------------


class RealEdge:
    """An edge node on a fixed loopback port that can be stopped and started again."""

    def __init__(self, origin_url: str, id: str, region: str, purge_log: MemoryPurgeLog | None = None,
                 **settings: Any) -> None:
        self.id, self.region = id, region
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.make = lambda: create_edge(EdgeSettings(origin=origin_url, id=id, region=region, port=self.port,
                                                     heartbeat_interval=0.2, **settings), purge_log=purge_log)
        self.server: ThreadServer | None = None

    def start(self) -> RealEdge:
        self.server = ThreadServer(self.make(), port=self.port, proxy=True).__enter__()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.__exit__(None, None, None)
            self.server = None


@pytest.fixture
def origin_url() -> Iterator[str]:
    scripted = ScriptedOrigin()
    scripted.route("/obj", Answer(headers=[("Cache-Control", "max-age=600")], body=b"object"))
    with ThreadServer(scripted) as server:
        yield server.url


def test_failover_when_a_regions_edges_stop_and_return_when_they_recover(
        origin_url: str, router_for: Callable[..., str]) -> None:
    edges = {name: RealEdge(origin_url, name, region).start()
             for name, region in (("eu-1", "eu-west"), ("eu-2", "eu-west"), ("us-1", "us-east"))}
    try:
        url = router_for([{"url": e.url, "id": e.id, "region": e.region} for e in edges.values()], **FAST_HEALTH)
        with httpx.Client(base_url=url, headers={"Host": HOST, "X-Client-Geo": "51.5,-0.12"}, timeout=30) as client:
            def regions_now() -> set[str]:
                answers = [client.get(f"/obj?k={i}") for i in range(20)]
                assert all(a.status_code == 200 and a.content == b"object" for a in answers)
                return {routed(a)["region"] for a in answers}

            assert regions_now() == {"eu-west"}
            edges["eu-1"].stop()
            edges["eu-2"].stop()
            # Every request is answered while the checks catch up: refused connections move to the next region.
            eventually(lambda: regions_now() == {"us-east"}, what="failover to us-east")
            assert all(routed(client.get(f"/obj?k={i}"))["edge"] == "us-1" for i in range(10))
            edges["eu-1"].start()
            edges["eu-2"].start()
            eventually(lambda: regions_now() == {"eu-west"}, what="return to eu-west")
            # The region's edges split its keys again, once the checks have seen both back (the first to
            # pass them takes every key until then).
            eventually(lambda: {routed(client.get(f"/obj?k={i}"))["edge"] for i in range(60)} == {"eu-1", "eu-2"},
                       what="both eu-west edges back")
    finally:
        for edge in edges.values():
            edge.stop()


def test_router_learns_edges_from_an_in_process_registry(origin_url: str, router_for: Callable[..., str]) -> None:
    registry = MemoryPurgeLog()
    eu = RealEdge(origin_url, "eu-1", "eu-west", registry, latitude=53.35, longitude=-6.26).start()
    ap = RealEdge(origin_url, "ap-1", "ap-southeast", registry).start()
    try:
        url = router_for([], purge_log=registry, registry_interval=0.1, live_after=1.0, **FAST_HEALTH)
        with httpx.Client(base_url=url, headers={"Host": HOST}, timeout=30) as client:
            def edge_for(geo: str) -> str | None:
                response = client.get("/obj", headers={"X-Client-Geo": geo})
                return routed(response)["edge"] if response.status_code == 200 else None

            eventually(lambda: edge_for("48.85,2.35") == "eu-1" and edge_for("13.75,100.5") == "ap-1",
                       what="both edges learnt from the registry")
            ap.stop()
            eventually(lambda: edge_for("13.75,100.5") == "eu-1", what="ap-1 dropped")
    finally:
        eu.stop()
        ap.stop()


def test_router_learns_edges_from_redis(tmp_path: Path, origin_url: str, router_for: Callable[..., str]) -> None:
    redis = RedisServer(tmp_path).start()
    edges = [RealEdge(origin_url, name, region, redis=redis.url).start()
             for name, region in (("us-1", "us-east"), ("sg-1", "ap-southeast"))]
    try:
        url = router_for([], redis=redis.url, registry_interval=0.1, live_after=1.0, **FAST_HEALTH)
        with httpx.Client(base_url=url, headers={"Host": HOST}, timeout=30) as client:
            def region_for(region: str) -> str | None:
                response = client.get("/obj", headers={"X-Client-Region": region})
                return routed(response)["region"] if response.status_code == 200 else None

            eventually(lambda: region_for("us-west") == "us-east" and region_for("ap-east") == "ap-southeast",
                       what="edges learnt from Redis")
            assert client.get("/_router/health").json()["registry"] == {"reachable": True}
    finally:
        for edge in edges:
            edge.stop()
        redis.kill()


def test_cdn_router_command_runs_the_front_door(fake_edge: tuple[ScriptedOrigin, str]) -> None:
    scripted, edge_url = fake_edge
    scripted.route("/hello", Answer(body=b"hi"))
    edges = json.dumps([{"url": edge_url, "id": "lab-1", "region": "eu-central"}])
    with cdn_process("router", "--edges", edges, "--health-interval", "60") as url:
        response = httpx.get(url + "/hello", headers={"Host": HOST, "X-Client-Region": "eu-west"})
    assert response.status_code == 200 and response.content == b"hi"
    assert routed(response)["edge"] == "lab-1" and routed(response)["region"] == "eu-central"
