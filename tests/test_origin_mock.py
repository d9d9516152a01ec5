"""The origin mock: catalog and asset endpoints, conditional requests, accounting, latency and faults."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
import uvicorn

from cdn.config import SettingsError, load_settings
from origin_mock.app import create_app
from origin_mock.assets import KINDS, AssetStore, asset_size
from origin_mock.catalog import Catalog
from origin_mock.conditional import match, none_match, not_modified
from origin_mock.database import MemoryDatabase
from origin_mock.faults import Fault, FaultPolicy, FaultSettings, round_trip_ms
from origin_mock.settings import OriginSettings

REPO = Path(__file__).resolve().parent.parent
PRODUCT_CACHE_CONTROL = "public, max-age=60, stale-while-revalidate=30, stale-if-error=300"


class FakeClock:
    """A clock that stands still unless moved."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingSleep:
    """Stands in for asyncio.sleep: remembers each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def scripted(*values: float) -> Callable[[], float]:
    """A random source returning `values` in turn, then 0.99 (which misses any rate below it)."""
    queue = list(values)
    return lambda: queue.pop(0) if queue else 0.99


def never_called() -> float:
    raise AssertionError("the random source was drawn from")


def client_for(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://origin")  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def origin(clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(OriginSettings(products=100, assets=10), clock=clock, random_source=never_called)
    async with client_for(app) as client:
        yield client


def http_time(value: str) -> float:
    return parsedate_to_datetime(value).timestamp()


# --- catalog ---------------------------------------------------------------------------------


async def test_product_has_caching_headers_and_surrogate_keys(origin: httpx.AsyncClient) -> None:
    r = await origin.get("/api/products/42")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == PRODUCT_CACHE_CONTROL
    assert r.headers["etag"] == '"p42-v1"'
    assert r.headers["surrogate-key"] == "products product-42"
    assert r.headers["x-content-version"] == "1"
    assert http_time(r.headers["last-modified"]) > 0
    body = r.json()
    assert body["id"] == 42 and body["version"] == 1
    assert {"name", "description", "price", "updated_at"} <= body.keys()


async def test_catalog_is_the_same_in_every_run(clock: FakeClock) -> None:
    bodies = []
    for _ in range(2):
        async with client_for(create_app(OriginSettings(), clock=clock)) as client:
            bodies.append((await client.get("/api/products/7")).content)
    assert bodies[0] == bodies[1]


async def test_product_list_is_paged_with_the_products_key(origin: httpx.AsyncClient) -> None:
    r = await origin.get("/api/products", params={"page": 2})
    assert r.status_code == 200
    assert r.headers["surrogate-key"] == "products product-lists"
    assert r.headers["cache-control"] == PRODUCT_CACHE_CONTROL
    assert "etag" in r.headers and "last-modified" in r.headers
    body = r.json()
    assert [p["id"] for p in body["items"]] == list(range(21, 41))
    assert (body["page"], body["pages"], body["total"]) == (2, 5, 100)
    assert (await origin.get("/api/products")).json()["page"] == 1
    assert (await origin.get("/api/products?page=9")).json()["items"] == []


@pytest.mark.parametrize("page", ["0", "-1", "two", ""])
async def test_bad_page_number_is_400(origin: httpx.AsyncClient, page: str) -> None:
    r = await origin.get("/api/products", params={"page": page})
    assert r.status_code == 400
    assert "page" in r.json()["error"]


async def test_unknown_product_is_404_json_with_short_max_age(origin: httpx.AsyncClient) -> None:
    r = await origin.get("/api/products/101")
    assert r.status_code == 404
    assert r.json() == {"error": "product 101 not found"}
    assert r.headers["cache-control"] == "public, max-age=10"
    assert (await origin.get("/api/products/abc")).status_code == 404


async def test_head_product_has_headers_and_no_body(origin: httpx.AsyncClient) -> None:
    r = await origin.head("/api/products/5")
    assert r.status_code == 200
    assert r.headers["etag"] == '"p5-v1"'
    assert r.content == b""


# --- conditional requests ----------------------------------------------------------------------


async def test_if_none_match_with_current_etag_is_304_with_validators(origin: httpx.AsyncClient) -> None:
    r = await origin.get("/api/products/3", headers={"If-None-Match": '"p3-v1"'})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == '"p3-v1"'
    assert r.headers["cache-control"] == PRODUCT_CACHE_CONTROL
    assert r.headers["surrogate-key"] == "products product-3"


async def test_if_none_match_matches_weakly_and_in_lists(origin: httpx.AsyncClient) -> None:
    for value in ['W/"p3-v1"', '"other", "p3-v1"', "*"]:
        r = await origin.get("/api/products/3", headers={"If-None-Match": value})
        assert r.status_code == 304, value
    r = await origin.get("/api/products/3", headers={"If-None-Match": '"p3-v0"'})
    assert r.status_code == 200


async def test_if_modified_since_is_304_unless_changed_since(origin: httpx.AsyncClient) -> None:
    last_modified = (await origin.get("/api/products/3")).headers["last-modified"]
    r = await origin.get("/api/products/3", headers={"If-Modified-Since": last_modified})
    assert r.status_code == 304
    r = await origin.get("/api/products/3", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert r.status_code == 200
    r = await origin.get("/api/products/3", headers={"If-Modified-Since": "not a date"})
    assert r.status_code == 200


async def test_if_none_match_takes_precedence_over_if_modified_since(origin: httpx.AsyncClient) -> None:
    last_modified = (await origin.get("/api/products/3")).headers["last-modified"]
    r = await origin.get("/api/products/3", headers={"If-None-Match": '"stale"', "If-Modified-Since": last_modified})
    assert r.status_code == 200


async def test_list_and_assets_answer_conditional_requests(origin: httpx.AsyncClient) -> None:
    for path in ["/api/products?page=1", "/static/css/site-2.css"]:
        first = await origin.get(path)
        r = await origin.get(path, headers={"If-None-Match": first.headers["etag"]})
        assert r.status_code == 304, path


def test_conditional_rules_without_a_server() -> None:
    assert none_match('W/"a"', '"a"')
    assert not none_match('"a"', '"b"')
    assert match('"a"', '"a"') and match("*", '"a"')
    assert not match('W/"a"', '"a"')  # If-Match compares strongly
    assert not_modified(None, "Sun, 06 Nov 1994 08:49:37 GMT", '"x"', 784111777)
    assert not not_modified(None, "Sun, 06 Nov 1994 08:49:37 GMT", '"x"', 784111778)
    assert not not_modified(None, None, '"x"', 0)


# --- updates ---------------------------------------------------------------------------------


async def test_update_bumps_version_etag_and_last_modified(origin: httpx.AsyncClient, clock: FakeClock) -> None:
    before = await origin.get("/api/products/42")
    r = await origin.patch("/api/products/42", json={"price": 12.5})
    assert r.status_code == 200
    assert r.json()["price"] == 12.5 and r.json()["version"] == 2
    assert r.headers["etag"] == '"p42-v2"'
    after = await origin.get("/api/products/42")
    assert after.headers["etag"] == '"p42-v2"'
    assert after.headers["x-content-version"] == "2"
    assert after.json()["name"] == before.json()["name"]
    assert http_time(after.headers["last-modified"]) > http_time(before.headers["last-modified"])


async def test_updates_within_one_second_still_move_last_modified(origin: httpx.AsyncClient) -> None:
    # The fake clock stands still: every update happens in the same second.
    stamps = []
    for name in ["a", "b", "c"]:
        r = await origin.put("/api/products/9", json={"name": name})
        stamps.append(http_time(r.headers["last-modified"]))
    assert stamps[0] < stamps[1] < stamps[2]
    assert (await origin.get("/api/products/9")).headers["etag"] == '"p9-v4"'


async def test_old_validators_stop_matching_after_an_update(origin: httpx.AsyncClient) -> None:
    old = await origin.get("/api/products/4")
    await origin.patch("/api/products/4", json={"name": "Renamed"})
    r = await origin.get("/api/products/4", headers={"If-None-Match": old.headers["etag"]})
    assert r.status_code == 200
    r = await origin.get("/api/products/4", headers={"If-Modified-Since": old.headers["last-modified"]})
    assert r.status_code == 200
    assert r.json()["name"] == "Renamed"


async def test_list_etag_changes_when_a_product_on_its_page_changes(origin: httpx.AsyncClient) -> None:
    page1 = (await origin.get("/api/products?page=1")).headers["etag"]
    page2 = (await origin.get("/api/products?page=2")).headers["etag"]
    await origin.patch("/api/products/3", json={"price": 1})
    r = await origin.get("/api/products?page=1")
    assert r.headers["etag"] != page1
    assert [p["price"] for p in r.json()["items"] if p["id"] == 3] == [1.0]
    assert (await origin.get("/api/products?page=2")).headers["etag"] == page2


async def test_update_with_bad_json_is_400(origin: httpx.AsyncClient) -> None:
    r = await origin.put("/api/products/1", content=b"{not json")
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]
    assert (await origin.get("/api/products/1")).headers["etag"] == '"p1-v1"'


@pytest.mark.parametrize(
    ("body", "field"),
    [({"version": 7}, "version"), ({"price": -1}, "price"), ({"name": ""}, "name"), ([1, 2], "body")],
)
async def test_update_with_bad_fields_is_400_naming_them(origin: httpx.AsyncClient, body: object, field: str) -> None:
    r = await origin.patch("/api/products/1", json=body)
    assert r.status_code == 400
    assert field in r.json()["error"]


async def test_update_of_unknown_product_is_404(origin: httpx.AsyncClient) -> None:
    r = await origin.put("/api/products/1000", json={"name": "x"})
    assert r.status_code == 404


async def test_update_with_stale_if_match_is_412(origin: httpx.AsyncClient) -> None:
    r = await origin.patch("/api/products/2", json={"name": "x"}, headers={"If-Match": '"p2-v0"'})
    assert r.status_code == 412
    r = await origin.patch("/api/products/2", json={"name": "x"}, headers={"If-Match": '"p2-v1"'})
    assert r.status_code == 200


async def test_unsupported_method_is_405_listing_the_allowed_ones(origin: httpx.AsyncClient) -> None:
    r = await origin.delete("/api/products/2")
    assert r.status_code == 405
    assert {"GET", "PUT", "PATCH"} <= {m.strip() for m in r.headers["allow"].split(",")}


async def test_catalog_rejects_fields_it_owns() -> None:
    with pytest.raises(ValueError, match="version"):
        await Catalog(10, MemoryDatabase()).update(1, {"version": 9})


# --- cart and health ---------------------------------------------------------------------------


async def test_cart_is_private_and_sets_a_session_cookie(origin: httpx.AsyncClient) -> None:
    r = await origin.get("/api/cart")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "private, no-store"
    assert "session=" in r.headers["set-cookie"]
    assert r.json() == {"items": [], "count": 0}


async def test_cart_keeps_items_per_session(origin: httpx.AsyncClient) -> None:
    r = await origin.post("/api/cart", json={"product_id": 5, "quantity": 2})
    assert r.json()["count"] == 2
    assert origin.cookies["session"] == r.cookies["session"]
    r = await origin.get("/api/cart")
    assert r.json()["items"] == [{"product_id": 5, "quantity": 2}]
    origin.cookies.clear()
    origin.cookies.set("session", "forgotten")
    r = await origin.get("/api/cart")
    assert r.json()["count"] == 0
    assert r.cookies["session"] != "forgotten"
    assert (await origin.post("/api/cart", json={"product_id": 999})).status_code == 404


async def test_healthz_reports_in_flight_requests(origin: httpx.AsyncClient) -> None:
    r = await origin.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "in_flight": 0}


# --- accounting --------------------------------------------------------------------------------


async def test_stats_count_requests_by_path_method_and_status(origin: httpx.AsyncClient) -> None:
    await origin.get("/api/products/1")
    await origin.get("/api/products/1")
    await origin.head("/api/products/2")
    await origin.get("/api/products?page=1")
    await origin.patch("/api/products/1", json={"price": 2})
    await origin.get("/api/products/555")
    stats = (await origin.get("/_origin/stats")).json()
    assert stats["total"] == 6
    assert stats["by_path"] == {"/api/products/1": 3, "/api/products/2": 1, "/api/products": 1, "/api/products/555": 1}
    assert stats["by_method"] == {"GET": 4, "HEAD": 1, "PATCH": 1}
    assert stats["by_status"] == {"200": 5, "404": 1}
    assert stats["bytes_sent"] > 0
    assert stats["in_flight"] == 0
    assert isinstance(stats["since"], float)


async def test_stats_leave_out_control_routes(origin: httpx.AsyncClient) -> None:
    await origin.get("/healthz")
    await origin.get("/_origin/faults")
    await origin.get("/_origin/stats")
    assert (await origin.get("/_origin/stats")).json()["total"] == 0


async def test_stats_count_body_bytes_but_not_head_bodies(origin: httpx.AsyncClient) -> None:
    await origin.head("/static/js/app-1.js")
    assert (await origin.get("/_origin/stats")).json()["bytes_sent"] == 0
    r = await origin.get("/static/js/app-1.js")
    assert (await origin.get("/_origin/stats")).json()["bytes_sent"] == len(r.content)


@pytest.mark.parametrize(("method", "path"), [("POST", "/_origin/stats/reset"), ("DELETE", "/_origin/stats")])
async def test_stats_reset_answers_the_final_counts_and_starts_over(
    origin: httpx.AsyncClient, clock: FakeClock, method: str, path: str
) -> None:
    await origin.get("/api/products/1")
    clock.now += 60
    r = await origin.request(method, path)
    assert r.status_code == 200 and r.json()["total"] == 1
    stats = (await origin.get("/_origin/stats")).json()
    assert stats["total"] == 0 and stats["by_path"] == {} and stats["bytes_sent"] == 0
    assert stats["since"] == clock.now


# --- static assets -----------------------------------------------------------------------------


async def test_assets_are_immutable_with_the_right_content_type(origin: httpx.AsyncClient) -> None:
    expected = {
        "/static/js/app-1.js": "text/javascript; charset=utf-8",
        "/static/css/site-1.css": "text/css; charset=utf-8",
        "/static/img/photo-1.jpg": "image/jpeg",
    }
    for path, content_type in expected.items():
        r = await origin.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == content_type
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["etag"] and r.headers["last-modified"]
        assert int(r.headers["content-length"]) == len(r.content)
    assert (await origin.get("/static/img/photo-1.jpg")).content[:2] == b"\xff\xd8"


async def test_assets_are_deterministic_across_instances() -> None:
    responses = []
    for _ in range(2):
        async with client_for(create_app(OriginSettings(assets=5))) as client:
            responses.append(await client.get("/static/img/photo-3.jpg"))
    assert responses[0].content == responses[1].content
    assert responses[0].headers["etag"] == responses[1].headers["etag"]


def test_asset_sizes_are_realistic_and_varied() -> None:
    bounds = {"js": (30, 200), "css": (5, 50), "img": (20, 500)}
    for name, (low, high) in bounds.items():
        sizes = [asset_size(KINDS[name], n) for n in range(1, 201)]
        assert all(low * 1024 <= s <= high * 1024 for s in sizes), name
        assert len(set(sizes)) > 150, name  # not one size for all


def test_asset_bodies_have_their_promised_size_and_are_cached() -> None:
    store = AssetStore(count=10, cache_bytes=10 * 1024 * 1024)
    for path in ["js/app-4.js", "css/site-4.css", "img/photo-4.jpg"]:
        asset = store.find(path)
        assert asset is not None
        body = store.body(asset)
        assert len(body) == asset.size
        assert store.body(asset) is body


def test_asset_store_with_no_cache_still_serves() -> None:
    store = AssetStore(count=1, cache_bytes=0)
    asset = store.find("css/site-1.css")
    assert asset is not None and len(store.body(asset)) == asset.size


@pytest.mark.parametrize(
    "path", ["/static/js/app-11.js", "/static/js/app-0.js", "/static/js/app-01.js", "/static/css/app-1.js", "/static/x"]
)
async def test_unknown_asset_is_404(origin: httpx.AsyncClient, path: str) -> None:
    r = await origin.get(path)
    assert r.status_code == 404
    assert r.headers["cache-control"] == "public, max-age=10"


async def test_head_asset_gives_its_length_without_a_body(origin: httpx.AsyncClient) -> None:
    r = await origin.head("/static/img/photo-2.jpg")
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == asset_size(KINDS["img"], 2)
    assert r.content == b""


# --- latency ------------------------------------------------------------------------------------


def test_round_trip_is_distance_at_two_thirds_light_speed() -> None:
    assert round_trip_ms(0) == 0
    assert round_trip_ms(1000) == pytest.approx(2 * 1000 / (299_792.458 * 2 / 3) * 1000)
    assert 10.0 < round_trip_ms(1000) < 10.01


async def test_latency_adds_fixed_jitter_and_distance_before_shop_responses() -> None:
    sleep = RecordingSleep()
    settings = OriginSettings(latency_ms=20, latency_jitter_ms=10, distance_km=1000)
    app = create_app(settings, sleep=sleep, random_source=scripted(0.5))
    async with client_for(app) as client:
        assert (await client.get("/api/products/1")).status_code == 200
        await client.get("/healthz")
        await client.get("/_origin/stats")
    assert sleep.delays == [pytest.approx((20 + 5 + round_trip_ms(1000)) / 1000)]


async def test_no_latency_or_faults_means_no_sleeping_and_no_draws() -> None:
    sleep = RecordingSleep()
    async with client_for(create_app(OriginSettings(), sleep=sleep, random_source=never_called)) as client:
        assert (await client.get("/static/js/app-1.js")).status_code == 200
    assert sleep.delays == []


# --- faults -------------------------------------------------------------------------------------


def test_fault_policy_draws_each_kind_in_turn() -> None:
    settings = FaultSettings(hang_rate=0.1, error_rate=0.1, cutoff_rate=0.1, slow_body_rate=0.1)
    assert FaultPolicy(settings, scripted(0.05)).choose() is Fault.HANG
    assert FaultPolicy(settings, scripted(0.5, 0.05)).choose() is Fault.ERROR
    assert FaultPolicy(settings, scripted(0.5, 0.5, 0.05)).choose() is Fault.CUTOFF
    assert FaultPolicy(settings, scripted(0.5, 0.5, 0.5, 0.05)).choose() is Fault.SLOW_BODY
    assert FaultPolicy(settings, scripted(0.5, 0.5, 0.5, 0.5)).choose() is Fault.NONE


@pytest.mark.parametrize(("draws", "status"), [((0.0, 0.2), 500), ((0.0, 0.7), 503)])
async def test_error_fault_answers_500_or_503(draws: tuple[float, float], status: int) -> None:
    app = create_app(OriginSettings(error_rate=0.5), random_source=scripted(*draws))
    async with client_for(app) as client:
        r = await client.get("/api/products/1")
        assert r.status_code == status
        assert r.json() == {"error": "injected fault"}
        assert (await client.get("/api/products/1")).status_code == 200  # the next draw, 0.99, misses
        stats = (await client.get("/_origin/stats")).json()
    assert stats["faults"] == {"error": 1}
    assert stats["by_status"] == {str(status): 1, "200": 1}


async def test_faults_spare_control_routes_and_other_paths() -> None:
    app = create_app(OriginSettings(error_rate=1), random_source=lambda: 0.0)
    async with client_for(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/_origin/stats")).status_code == 200
        assert (await client.get("/favicon.ico")).status_code == 404
        assert (await client.get("/static/js/app-1.js")).status_code == 500


async def test_hang_fault_sleeps_hang_seconds_then_answers_late() -> None:
    sleep = RecordingSleep()
    app = create_app(OriginSettings(hang_rate=1, hang_seconds=1234), sleep=sleep, random_source=lambda: 0.0)
    async with client_for(app) as client:
        r = await client.patch("/api/products/1", json={"name": "late"})
        assert r.status_code == 200 and r.json()["name"] == "late"  # the body read while hanging is replayed
    assert sleep.delays == [1234]


async def test_slow_body_fault_trickles_the_whole_body_at_the_set_rate() -> None:
    sleep = RecordingSleep()
    settings = OriginSettings(slow_body_rate=1, slow_body_bytes_per_second=10_000)
    app = create_app(settings, sleep=sleep, random_source=lambda: 0.0)
    async with client_for(app) as client:
        r = await client.get("/static/css/site-1.css")
        stats = (await client.get("/_origin/stats")).json()
    assert r.status_code == 200
    assert len(r.content) == int(r.headers["content-length"])
    assert sum(sleep.delays) == pytest.approx(len(r.content) / 10_000)
    assert len(sleep.delays) > 1
    assert stats["faults"] == {"slow_body": 1}


async def test_faults_can_be_changed_and_restored_at_run_time() -> None:
    async with client_for(create_app(OriginSettings(), random_source=lambda: 0.0)) as client:
        assert (await client.get("/api/products/1")).status_code == 200
        r = await client.post("/_origin/faults", json={"error_rate": 1})
        assert r.status_code == 200 and r.json()["error_rate"] == 1
        assert (await client.get("/api/products/1")).status_code == 500
        assert (await client.get("/_origin/faults")).json()["error_rate"] == 1
        r = await client.delete("/_origin/faults")
        assert r.json()["error_rate"] == 0
        assert (await client.get("/api/products/1")).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"), [({"error_rate": 2}, "error_rate"), ({"latency_ms": -1}, "latency_ms"), ({"nope": 1}, "nope")]
)
async def test_runtime_fault_changes_are_validated(origin: httpx.AsyncClient, body: dict, field: str) -> None:
    r = await origin.post("/_origin/faults", json=body)
    assert r.status_code == 400
    assert field in r.json()["error"]
    assert (await origin.get("/_origin/faults")).json()["error_rate"] == 0


# --- against a real server ------------------------------------------------------------------------


class LiveOrigin:
    """The origin mock served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, settings: OriginSettings) -> None:
        self.app = create_app(settings, random_source=lambda: 0.0)
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.socket.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveOrigin:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "origin did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


StartOrigin = Callable[[OriginSettings], LiveOrigin]


@pytest.fixture
def live_origin_factory() -> Iterator[StartOrigin]:
    started: list[LiveOrigin] = []

    def start(settings: OriginSettings) -> LiveOrigin:
        live = LiveOrigin(settings).__enter__()
        started.append(live)
        return live

    yield start
    for live in started:
        live.__exit__()


async def test_cutoff_fault_leaves_the_client_with_an_incomplete_body(live_origin_factory: StartOrigin) -> None:
    live = live_origin_factory(OriginSettings(cutoff_rate=1))
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/static/js/app-1.js")
        stats = (await client.get("/_origin/stats")).json()
    expected = asset_size(KINDS["js"], 1)
    assert stats["faults"] == {"cutoff": 1}
    assert stats["bytes_sent"] == expected // 2


async def test_hang_fault_ends_when_the_client_gives_up(live_origin_factory: StartOrigin) -> None:
    live = live_origin_factory(OriginSettings(hang_rate=1, hang_seconds=3600))
    async with httpx.AsyncClient(base_url=live.url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/api/products/1")
    async with httpx.AsyncClient(base_url=live.url, timeout=5) as client:
        deadline = time.monotonic() + 5
        while (await client.get("/healthz")).json()["in_flight"]:
            assert time.monotonic() < deadline, "the hung request outlived its client"
            await asyncio.sleep(0.02)
        assert (await client.get("/_origin/stats")).json()["faults"] == {"hang": 1}


# --- settings and command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"error_rate": 1.5}, "error_rate"),
        ({"cutoff_rate": -0.1}, "cutoff_rate"),
        ({"latency_ms": -5}, "latency_ms"),
        ({"hang_seconds": 0}, "hang_seconds"),
        ({"products": 0}, "products"),
        ({"port": 70000}, "port"),
        ({"slow_body_bytes_per_second": 0}, "slow_body_bytes_per_second"),
    ],
)
def test_invalid_settings_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(SettingsError, match=f"origin.{field}"):
        load_settings(OriginSettings, overrides=overrides, environ={})


def test_settings_come_from_the_environment() -> None:
    settings = load_settings(OriginSettings, environ={"CDN_ORIGIN_ERROR_RATE": "0.25", "CDN_ORIGIN_PRODUCTS": "5"})
    assert settings.error_rate == 0.25 and settings.products == 5


def test_every_setting_is_described() -> None:
    assert all(field.description for field in OriginSettings.model_fields.values())


def test_cdn_origin_help_lists_the_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cdn", "origin", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for flag in ["--port", "--products", "--error-rate", "--hang-seconds", "--distance-km", "--cutoff-rate"]:
        assert flag in result.stdout
