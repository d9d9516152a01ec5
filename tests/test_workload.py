"""The workload generator: popularity, reading answers, the ideal-cache bound, stale detection, its HTTP client, real runs."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from cdn.workload import (
    AbusiveClient,
    Change,
    ConnectionPool,
    Invalidation,
    Lookup,
    PurgeAck,
    RequestFailed,
    RequestPicker,
    RequestRecord,
    Trace,
    Weighted,
    Workload,
    WorkloadConfig,
    Zipf,
    bust,
    classify,
    freshness_lifetime,
    ideal_origin_fetches,
    object_tags,
    percentile,
    stale_after_acknowledged_purge,
    url_key,
)
from tests.servers import ThreadServer, free_port

# -- popularity and requests -------------------------------------------------------------------------


def test_zipf_frequencies_fall_as_rank_to_the_power_s() -> None:
    zipf, rng = Zipf(200, 1.1), random.Random(7)
    counts = Counter(zipf.sample(rng) for _ in range(100_000))
    assert set(counts) <= set(range(1, 201))
    assert counts[1] / counts[2] == pytest.approx(2**1.1, rel=0.08)
    assert counts[1] / counts[10] == pytest.approx(10**1.1, rel=0.15)
    harmonic = sum(1 / k**1.1 for k in range(1, 201))
    assert counts[1] / 100_000 == pytest.approx(1 / harmonic, rel=0.03)


def test_zipf_draws_are_the_same_for_the_same_seed() -> None:
    zipf = Zipf(50, 1.0)
    draws = [[zipf.sample(rng) for _ in range(100)] for rng in (random.Random(3), random.Random(3))]
    assert draws[0] == draws[1]


def test_request_mix_follows_its_shares_and_names_real_paths() -> None:
    config = WorkloadConfig(mix={"product": 0.5, "list": 0.1, "static": 0.38, "cart": 0.02}, products=100, assets=10)
    picker, rng = RequestPicker(config), random.Random(1)
    picks = [picker.pick(rng) for _ in range(20_000)]
    kinds = Counter(kind for kind, _ in picks)
    assert kinds["product"] / 20_000 == pytest.approx(0.5, abs=0.02)
    assert kinds["static"] / 20_000 == pytest.approx(0.38, abs=0.02)
    assert kinds["cart"] / 20_000 == pytest.approx(0.02, abs=0.006)
    keys = {key for _, key in picks}
    assert "/api/products/1" in keys and "/api/products?page=1" in keys and "/api/cart" in keys
    assert {"/static/js/app-1.js", "/static/css/site-1.css", "/static/img/photo-1.jpg"} <= keys
    assert not any(key.startswith("/api/products?page=") and int(key.split("=")[1]) > 5 for key in keys)  # 100 / 20


def test_weighted_never_picks_a_zero_share() -> None:
    rng = random.Random(2)
    assert {Weighted({"a": 1.0, "b": 0.0}).sample(rng) for _ in range(1000)} == {"a"}


def test_cache_buster_is_left_out_of_the_url_key() -> None:
    rng = random.Random(4)
    busted = bust("/api/products?page=2", rng)
    assert busted.startswith("/api/products?page=2&cb=") and busted != bust("/api/products?page=2", rng)
    assert url_key(busted) == "/api/products?page=2"
    assert url_key(bust("/static/js/app-3.js", rng)) == "/static/js/app-3.js"
    assert url_key("/api/products/7") == "/api/products/7"


def test_object_tags_mirror_the_origin_surrogate_keys() -> None:
    assert object_tags("/api/products/42") == {"products", "product-42"}
    assert object_tags("/api/products?page=3") == {"products", "product-lists"}
    assert object_tags("/static/img/photo-3.jpg") == {"static", "static-img"}
    assert object_tags("/api/cart") == frozenset()


# -- reading answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "cache_status", "expected"), [
    (200, "eu-1; hit; ttl=59", ("hit", "eu-1", None)),
    (200, "eu-1; hit; ttl=-3; detail=stale-while-revalidate", ("stale", "eu-1", "stale-while-revalidate")),
    (200, "eu-1; hit; fwd=stale; fwd-status=503; ttl=-9; detail=stale-if-error", ("stale", "eu-1", "stale-if-error")),
    (200, "eu-1; fwd=miss; fwd-status=200; stored", ("miss", "eu-1", None)),
    (200, "eu-1; fwd=miss; collapsed; ttl=60", ("miss", "eu-1", None)),
    (200, "eu-1; fwd=stale; fwd-status=304; stored", ("miss", "eu-1", None)),
    (200, "eu-1; fwd=miss; fwd-status=200; detail=private", ("pass", "eu-1", "private")),
    (200, "eu-1; fwd=bypass; fwd-status=200", ("pass", "eu-1", None)),
    (502, "eu-1; fwd=miss; detail=origin-error", ("error", "eu-1", "origin-error")),
    (503, "eu-1; fwd=miss; detail=version-fence", ("error", "eu-1", "version-fence")),
    (429, None, ("refused", None, None)),
    (403, None, ("refused", None, None)),
    (503, None, ("error", None, None)),
    (200, "shield-1; fwd=miss; stored, eu-2; hit; ttl=10", ("hit", "eu-2", None)),  # the client's cache is last
])
def test_classify_reads_the_cache_nearest_the_client(status: int, cache_status: str | None,
                                                     expected: tuple[str, str | None, str | None]) -> None:
    assert classify(status, cache_status) == expected


@pytest.mark.parametrize(("cache_control", "ttl"), [
    ("public, max-age=60, stale-while-revalidate=30", 60.0),
    ("max-age=60, s-maxage=300", 300.0),
    ("max-age=31536000, immutable", 31536000.0),
    ("private, no-store", 0.0),
    ("no-cache, max-age=60", 0.0),
    ("public", 0.0),
    (None, 0.0),
])
def test_freshness_lifetime_is_what_a_shared_cache_may_use(cache_control: str | None, ttl: float) -> None:
    assert freshness_lifetime(cache_control) == ttl


# -- the best possible offload ---------------------------------------------------------------------


def lookups(*entries: tuple[float, str], cache: str = "shared") -> list[Lookup]:
    return [Lookup(at, key, cache) for at, key in entries]


def test_ideal_cache_fetches_each_object_once_while_fresh() -> None:
    by_cache, reasons = ideal_origin_fetches(
        lookups((0, "/a"), (1, "/a"), (2, "/b"), (3, "/a"), (4, "/b")), {"/a": 60, "/b": 60}, [])
    assert by_cache == {"shared": 2} and reasons == {"first": 2}


def test_ideal_cache_fetches_again_after_expiry() -> None:
    _, reasons = ideal_origin_fetches(lookups((0, "/a"), (9.9, "/a"), (10, "/a"), (15, "/a"), (25, "/a")), {"/a": 10}, [])
    assert reasons == {"first": 1, "expiry": 2}  # at 10 (fetched at 0) and 25 (fetched at 10)


def test_ideal_cache_counts_a_copy_s_lifetime_from_when_its_answer_came_back() -> None:
    # A real cache stored the copy between the request and its answer, and looks at a later request once it
    # arrives: counting the lifetime from the request's sending would overcount (no longer a lower bound).
    slow = [Lookup(0, "/a", "shared", 0.5), Lookup(10.2, "/a", "shared", 10.3), Lookup(10.6, "/a", "shared", 10.7)]
    _, reasons = ideal_origin_fetches(slow[:2], {"/a": 10}, [])
    assert reasons == {"first": 1}  # the copy answered at 0.5 may have been fresh until 10.5
    _, reasons = ideal_origin_fetches(slow, {"/a": 10}, [])
    assert reasons == {"first": 1, "expiry": 1}  # but not at 10.6


def test_ideal_cache_fetches_again_after_a_purge_of_one_of_its_tags() -> None:
    ttls = {"/api/products/1": 60, "/api/products/2": 60, "/api/products?page=1": 60, "/static/js/app-1.js": 1e9}
    trace = lookups((0, "/api/products/1"), (0, "/api/products/2"), (0, "/api/products?page=1"),
                    (0, "/static/js/app-1.js"), (5, "/api/products/1"), (5, "/api/products/2"),
                    (5, "/api/products?page=1"), (5, "/static/js/app-1.js"))
    _, only_one = ideal_origin_fetches(trace, ttls, [Invalidation(3, frozenset({"product-1"}))])
    assert only_one == {"first": 4, "purge": 1}
    _, every_product = ideal_origin_fetches(trace, ttls, [Invalidation(3, frozenset({"product-1", "products"}))])
    assert every_product == {"first": 4, "purge": 3}  # static assets are not tagged `products`
    _, before_any = ideal_origin_fetches(trace, ttls, [Invalidation(-1, frozenset({"products"}))])
    assert before_any == {"first": 4}  # nothing held yet: nothing to purge


def test_ideal_cache_counts_a_purge_of_an_expired_entry_as_expiry() -> None:
    _, reasons = ideal_origin_fetches(lookups((0, "/api/products/1"), (20, "/api/products/1")),
                                      {"/api/products/1": 10}, [Invalidation(15, frozenset({"products"}))])
    assert reasons == {"first": 1, "expiry": 1}


def test_ideal_cache_purge_at_the_same_instant_comes_first() -> None:
    _, reasons = ideal_origin_fetches(lookups((0, "/api/products/1"), (3, "/api/products/1")),
                                      {"/api/products/1": 60}, [Invalidation(3, frozenset({"product-1"}))])
    assert reasons == {"first": 1, "purge": 1}


def test_ideal_cache_fetches_uncacheable_objects_every_time() -> None:
    _, reasons = ideal_origin_fetches(lookups((0, "/api/cart"), (1, "/api/cart"), (2, "/api/cart")), {"/api/cart": 0}, [])
    assert reasons == {"uncacheable": 3}


def test_ideal_cache_keeps_an_object_of_unknown_lifetime_until_purged() -> None:
    _, reasons = ideal_origin_fetches(lookups((0, "/api/products/9"), (500, "/api/products/9"), (900, "/api/products/9")),
                                      {}, [Invalidation(600, frozenset({"product-9"}))])
    assert reasons == {"first": 1, "purge": 1}


def test_ideal_per_edge_caches_each_fetch_on_their_own() -> None:
    trace = lookups((0, "/a"), (1, "/a"), cache="eu-1") + lookups((2, "/a"), (3, "/a"), cache="eu-2")
    by_cache, _ = ideal_origin_fetches(trace, {"/a": 60}, [])
    assert by_cache == {"eu-1": 1, "eu-2": 1}
    shared, _ = ideal_origin_fetches([lk._replace(cache="shared") for lk in trace], {"/a": 60}, [])
    assert shared == {"shared": 1}


# -- stale after an acknowledged purge -------------------------------------------------------------


def record(sent: float, key: str, version: int | None, status: int = 200, outcome: str = "hit") -> RequestRecord:
    return RequestRecord(sent, 0.001, "127.0.0.10", "eu-west", "product", key, status, outcome, "eu-1", None, 10, version)


def change(product: int, version: int, created: float, applied: dict[str, float | None], complete: bool = True) -> Change:
    ack = PurgeAck(f"p-{version}", created, complete, applied, (f"product-{product}", "products"))
    return Change(created - 0.01, product, 200, version, f"p-{version}", 0, ack)


def test_stale_after_ack_flags_an_older_version_sent_after_the_last_edge_applied_the_purge() -> None:
    changes = [change(7, 5, created=100.0, applied={"eu-1": 100.002, "us-1": 100.010})]
    requests = [record(100.005, "/api/products/7", 4),  # before us-1 applied it: allowed
                record(100.011, "/api/products/7", 4),  # after every edge did: stale
                record(100.012, "/api/products/7", 5),
                record(100.013, "/api/products/8", 1),  # another product
                record(100.014, "/api/products/7", 4, status=503, outcome="error")]
    assert stale_after_acknowledged_purge(requests, changes) == [requests[1]]


def test_stale_after_ack_ignores_purges_not_acknowledged_by_every_edge() -> None:
    changes = [change(7, 5, created=100.0, applied={"eu-1": 100.002}, complete=False)]
    assert stale_after_acknowledged_purge([record(200.0, "/api/products/7", 4)], changes) == []


def test_stale_after_ack_uses_the_newest_acknowledged_version() -> None:
    changes = [change(7, 5, 100.0, {"eu-1": 100.1}), change(7, 6, 101.0, {"eu-1": 101.1, "us-1": None})]
    requests = [record(100.5, "/api/products/7", 5), record(101.5, "/api/products/7", 5), record(101.6, "/api/products/7", 6)]
    assert stale_after_acknowledged_purge(requests, changes) == [requests[1]]


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0], 99) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == 99.0


# -- the HTTP client, against real servers -------------------------------------------------------------


@dataclass
class Incoming:
    method: str
    target: str
    headers: dict[str, str]
    client: tuple[str, int]
    body: bytes


Handler = Callable[[Incoming], Awaitable[tuple[int, list[tuple[str, str]], bytes | list[bytes]]]]


def asgi(handler: Handler) -> Callable[..., Awaitable[None]]:
    """A raw ASGI app around `handler`; a list body is streamed chunk by chunk (chunked encoding)."""

    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope["query_string"].decode()
        incoming = Incoming(scope["method"], scope["path"] + ("?" + query if query else ""),
                            {k.decode().lower(): v.decode() for k, v in scope["headers"]}, tuple(scope["client"]), body)
        status, headers, payload = await handler(incoming)
        raw = [(k.lower().encode(), v.encode()) for k, v in headers]
        if isinstance(payload, bytes):
            raw.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        for chunk in payload if isinstance(payload, list) else [payload]:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def echo(request: Incoming) -> tuple[int, list[tuple[str, str]], bytes | list[bytes]]:
    if request.target.startswith("/slow"):
        await asyncio.sleep(1.0)
    if request.target == "/chunked":
        return 200, [], [b"a" * 1000, b"b" * 5000, b"c"]
    document = {"method": request.method, "target": request.target, "client": list(request.client),
                "body": len(request.body), "host": request.headers.get("host"), "region": request.headers.get("x-client-region")}
    return 201 if request.method == "PATCH" else 200, [("x-test", "one"), ("x-test", "two")], json.dumps(document).encode()


@pytest.fixture(scope="module")
def echo_server() -> Any:
    with ThreadServer(asgi(echo)) as server:
        yield server


async def test_client_reuses_one_keep_alive_connection(echo_server: ThreadServer) -> None:
    pool = ConnectionPool(echo_server.url)
    answers = [json.loads((await pool.request("GET", f"/n/{i}")).body) for i in range(3)]
    await pool.aclose()
    assert pool.opened == 1
    assert len({tuple(a["client"]) for a in answers}) == 1
    assert [a["target"] for a in answers] == ["/n/0", "/n/1", "/n/2"]


async def test_client_sends_from_the_source_address_it_is_given(echo_server: ThreadServer) -> None:
    pool = ConnectionPool(echo_server.url, local_address="127.0.0.2", host="shop.example")
    answer = json.loads((await pool.request("GET", "/", [("x-client-region", "eu-west")])).body)
    await pool.aclose()
    assert answer["client"][0] == "127.0.0.2"
    assert answer["host"] == "shop.example" and answer["region"] == "eu-west"


async def test_client_gives_status_repeated_fields_and_body(echo_server: ThreadServer) -> None:
    pool = ConnectionPool(echo_server.url)
    patched = await pool.request("PATCH", "/api/products/3", [("content-type", "application/json")], b'{"price": 1}')
    chunked = await pool.request("GET", "/chunked")
    await pool.aclose()
    assert patched.status == 201 and json.loads(patched.body)["body"] == 12
    assert patched.header("X-Test") == "one, two" and patched.header("x-missing") is None
    assert chunked.body == b"a" * 1000 + b"b" * 5000 + b"c"
    assert pool.opened == 1


async def test_client_opens_at_most_max_connections(echo_server: ThreadServer) -> None:
    pool = ConnectionPool(echo_server.url, max_connections=3)
    answers = await asyncio.gather(*(pool.request("GET", f"/slow/{i}") for i in range(6)))
    await pool.aclose()
    assert all(a.status == 200 for a in answers)
    assert pool.opened == 3


async def test_client_times_out_then_works_on_a_new_connection(echo_server: ThreadServer) -> None:
    pool = ConnectionPool(echo_server.url, timeout=0.2)
    with pytest.raises(RequestFailed) as failed:
        await pool.request("GET", "/slow")
    assert failed.value.reason == "timeout"
    assert (await pool.request("GET", "/fast")).status == 200
    await pool.aclose()
    assert pool.opened == 2


async def test_client_reports_a_refused_connection() -> None:
    pool = ConnectionPool(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RequestFailed) as failed:
        await pool.request("GET", "/")
    assert failed.value.reason == "connect"


async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers the first request with keep-alive, then drops the connection at the next one, as a server whose
    keep-alive timeout just passed would."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def test_client_asks_again_when_a_reused_connection_was_dropped_but_not_for_patch() -> None:
    server = await asyncio.start_server(one_answer_per_connection, "127.0.0.1", 0)
    pool = ConnectionPool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        assert (await pool.request("GET", "/1")).body == b"ok"
        assert (await pool.request("GET", "/2")).body == b"ok"  # the reused connection dropped: a new one answered
        assert pool.opened == 2
        with pytest.raises(RequestFailed) as failed:
            await pool.request("PATCH", "/3", body=b"{}")  # a change is never sent twice
        assert failed.value.reason == "connection"
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()


# -- short real runs against a scripted CDN -----------------------------------------------------------


@dataclass
class ScriptedCdn:
    """Front door with two edges a region, origin and purge API in one: exact caches, purges applied at once."""

    product_max_age: int = 2
    honour_purges: bool = True
    abusive_limit: int = 15  # requests a second a client from 127.0.0.200 and up may send
    lock: threading.Lock = field(default_factory=threading.Lock)
    cache: dict[tuple[str, str], tuple[float, int | None]] = field(default_factory=dict)
    versions: Counter[int] = field(default_factory=Counter)
    origin: Counter[str] = field(default_factory=Counter)
    origin_bytes: int = 0
    purges: dict[str, dict[str, Any]] = field(default_factory=dict)
    clients: set[str] = field(default_factory=set)
    per_second: Counter[tuple[str, int]] = field(default_factory=Counter)
    edges: set[str] = field(default_factory=set)

    def max_age(self, path: str) -> int:
        return self.product_max_age if path.startswith("/api/products") else 31_536_000

    def fetch(self, path: str) -> tuple[bytes, int | None]:
        """What the origin answers (counted)."""
        version = None
        if path.startswith("/api/products/"):
            version = self.versions[int(path.rsplit("/", 1)[1])] + 1
        body = json.dumps({"path": path, "version": version}).encode() + b" " * 200
        self.origin["GET"] += 1
        self.origin_bytes += len(body)
        return body, version

    async def front_door(self, request: Incoming) -> tuple[int, list[tuple[str, str]], bytes]:
        region = request.headers.get("x-client-region", "none")
        edge = f"{region}-{1 + sum(map(ord, request.target)) % 2}"
        address = request.client[0]
        with self.lock:
            self.clients.add(address)
            self.edges.add(edge)
            second = int(time.monotonic())
            self.per_second[(address, second)] += 1
            if int(address.rsplit(".", 1)[1]) >= 200 and self.per_second[(address, second)] > self.abusive_limit:
                return 429, [("retry-after", "1"), ("x-routed-to", f"{edge}; region={region}")], b"slow down"
            path = request.target.partition("?")[0]
            if path == "/api/cart":
                body, _ = self.fetch(path)
                return 200, [("cache-control", "private, no-store"),
                             ("cache-status", f"{edge}; fwd=miss; fwd-status=200; detail=private")], body
            stored = self.cache.get((edge, request.target))
            now = time.time()
            if stored and now < stored[0] + self.max_age(path):
                status = f"{edge}; hit; ttl={int(stored[0] + self.max_age(path) - now)}"
                body, version = b"x" * 250, stored[1]
            else:
                body, version = self.fetch(path)
                self.cache[(edge, request.target)] = (now, version)
                status = f"{edge}; fwd=miss; fwd-status=200; stored"
        headers = [("cache-control", f"public, max-age={self.max_age(path)}"), ("cache-status", status)]
        if version is not None:
            headers.append(("x-content-version", str(version)))
        return 200, headers, body

    async def origin_app(self, request: Incoming) -> tuple[int, list[tuple[str, str]], bytes]:
        if request.target == "/_origin/stats":
            with self.lock:
                stats = {"total": sum(self.origin.values()), "by_method": dict(self.origin), "bytes_sent": self.origin_bytes}
            return 200, [], json.dumps(stats).encode()
        product = int(request.target.rsplit("/", 1)[1])
        assert request.method == "PATCH" and json.loads(request.body)["price"] > 0
        with self.lock:
            self.origin["PATCH"] += 1
            self.versions[product] += 1
            version = self.versions[product]
            purge_id = f"p-{len(self.purges) + 1}"
            tags = [f"product-{product}", "products"]
            now = time.time()
            if self.honour_purges:
                for key in [k for k in self.cache if k[1].startswith("/api/products")]:
                    del self.cache[key]
            self.purges[purge_id] = {"id": purge_id, "kind": "tag", "values": tags, "created_at": now, "complete": True,
                                     "applied": {edge: {"at": now + 0.001, "after_ms": 1.0} for edge in self.edges},
                                     "pending": []}
            body = json.dumps({"id": product, "version": version}).encode()
            self.origin_bytes += len(body)
        return 200, [("x-content-version", str(version)), ("x-purge-id", purge_id), ("cache-control", "no-store")], body

    async def purge_api(self, request: Incoming) -> tuple[int, list[tuple[str, str]], bytes]:
        if request.headers.get("authorization") != "Bearer sesame":
            return 401, [], b'{"error": "missing bearer token"}'
        answer = self.purges.get(request.target.partition("?")[0].rsplit("/", 1)[1])
        return (200, [], json.dumps(answer).encode()) if answer else (404, [], b'{"error": "no such purge"}')


def short_config(**changes: Any) -> WorkloadConfig:
    settings: dict[str, Any] = {
        "duration": 2.5, "rate": 80.0, "regions": {"us-east": 0.5, "eu-west": 0.3, "ap-northeast": 0.2},
        "clients_per_region": 2, "products": 40, "assets": 10, "change_rate": 3.0, "seed": 11,
        "abusive": [AbusiveClient(40.0), AbusiveClient(40.0, cache_busting=True)], "ack_timeout": 3.0, "timeout": 5.0}
    settings.update(changes)
    return WorkloadConfig(**settings)


async def run_against(cdn: ScriptedCdn, config: WorkloadConfig, progress: list[Any] | None = None) -> Trace:
    with ThreadServer(asgi(cdn.front_door)) as door, ThreadServer(asgi(cdn.origin_app)) as origin, \
            ThreadServer(asgi(cdn.purge_api)) as purges:
        workload = Workload(config, door.url, origin.url, purges.url, "sesame",
                            progress=None if progress is None else progress.append)
        return await workload.run()


async def test_short_run_figures_add_up() -> None:
    cdn, progress = ScriptedCdn(), []
    started = time.monotonic()
    trace = await run_against(cdn, short_config(), progress)
    elapsed = time.monotonic() - started
    report = json.loads(json.dumps(trace.to_report({"us-east": 80.0, "eu-west": 8.0, "ap-northeast": 150.0})))
    requests = report["requests"]

    assert elapsed < 2.5 + 2.0  # stops by itself
    assert requests["total"] == len(trace.requests) > 200
    assert requests["total"] == sum(requests[o] for o in ("hit", "stale", "miss", "pass", "refused", "error"))
    assert requests["error"] == 0 and requests["hit"] > 0 and requests["miss"] > 0 and requests["pass"] > 0
    for grouping in ("by_edge", "by_region"):
        assert sum(group["total"] for group in report[grouping].values()) == requests["total"]
    assert sum(second["requests"] for second in report["timeline"]) == requests["total"]
    assert set(report["by_edge"]) == {f"{r}-{n}" for r in ("us-east", "eu-west", "ap-northeast") for n in (1, 2)}

    # Every miss and pass went to the scripted origin, and nothing else did.
    assert report["origin"]["requests"] == requests["miss"] + requests["pass"] == cdn.origin["GET"]
    assert report["origin"]["offload_requests"] == pytest.approx(1 - cdn.origin["GET"] / requests["total"], abs=1e-4)
    assert 0 < report["origin"]["offload_bytes"] < 1
    ideal = report["ideal"]
    shared, per_edge = ideal["shared_cache"]["origin_fetches"], ideal["per_edge_cache"]["origin_fetches"]
    assert 0 < shared <= per_edge <= report["origin"]["requests"]
    assert ideal["shared_cache"]["forced_by"]["first"] > 0 and ideal["shared_cache"]["forced_by"]["purge"] > 0
    assert ideal["shared_cache"]["forced_by"]["uncacheable"] == requests["pass"]
    assert 0 < ideal["achieved_of_best"] <= 1

    # Clients came from their own addresses; the abusive ones were refused, the ordinary ones never.
    assert cdn.clients == {f"127.0.0.{n}" for n in range(10, 16)} | {"127.0.0.200", "127.0.0.201"}
    assert report["shield"]["refused"] == requests["refused"] > 0
    assert set(report["shield"]["by_client"]) <= {"127.0.0.200", "127.0.0.201"}
    assert {c["kind"] for c in report["clients"]} == {"ordinary", "abusive", "cache-busting"}

    # Changes carry their version and purge; every purge was acknowledged; nothing stale was served.
    assert len(trace.changes) >= 3 and all(c.status == 200 and c.version and c.purge_id for c in trace.changes)
    assert report["purges"]["acknowledged"] == len(trace.changes) and report["purges"]["incomplete"] == 0
    assert report["purges"]["propagation_ms"]["p50"] == pytest.approx(1.0, abs=0.01)
    assert report["stale"]["older_than_acknowledged_purge"] == 0
    assert report["latency"]["client_to_edge_ms"]["count"] > 0
    assert report["latency"]["modelled_origin_ms"]["ap-northeast"] == 150.0
    assert sum(report["latency"]["histogram"]["counts"]) == report["latency"]["client_to_edge_ms"]["count"]
    assert len(progress) >= 2 and progress[-1].requests == requests["total"]


async def test_run_detects_content_served_after_an_acknowledged_purge() -> None:
    cdn = ScriptedCdn(product_max_age=60, honour_purges=False)
    trace = await run_against(cdn, short_config(products=3, mix={"product": 1.0}, change_rate=4.0, abusive=[]))
    report = trace.to_report()
    assert report["stale"]["older_than_acknowledged_purge"] > 0
    example = report["stale"]["examples"][0]
    newer = [c for c in trace.changes if f"/api/products/{c.product_id}" == example["url"] and c.version > example["version"]]
    assert newer and newer[0].ack is not None and newer[0].ack.completed_at < example["sent"]


async def test_run_without_origin_or_purge_api_leaves_those_figures_unknown() -> None:
    cdn = ScriptedCdn()
    with ThreadServer(asgi(cdn.front_door)) as door:
        trace = await Workload(short_config(duration=1.0, abusive=[]), door.url).run()
    report = trace.to_report()
    assert report["requests"]["total"] > 0 and report["origin"]["requests"] is None
    assert report["origin"]["offload_requests"] is None and report["ideal"]["achieved_of_best"] is None
    assert report["ideal"]["shared_cache"]["origin_fetches"] > 0 and trace.changes == []


async def test_run_counts_requests_that_got_no_answer_as_errors() -> None:
    trace = await Workload(short_config(duration=0.5, abusive=[], timeout=1.0), f"http://127.0.0.1:{free_port()}").run()
    report = trace.to_report()
    assert report["requests"]["total"] == report["requests"]["error"] > 0
    assert {r.detail for r in trace.requests} == {"connect"}


async def test_run_ends_on_time_when_the_cdn_is_slower_than_the_schedule() -> None:
    async def slow(request: Incoming) -> tuple[int, list[tuple[str, str]], bytes]:
        await asyncio.sleep(0.8)
        return 200, [("x-served-by", "us-east-1; region=us-east"), ("cache-status", "us-east-1; hit")], b"late"

    config = short_config(duration=1.0, rate=40.0, abusive=[], concurrency=2, max_lag=0.3, timeout=2.0)
    with ThreadServer(asgi(slow)) as door:
        started = time.monotonic()
        trace = await Workload(config, door.url).run()
        elapsed = time.monotonic() - started
    report = trace.to_report()
    assert elapsed < 1.0 + 0.3 + 2.0 + 1.0
    assert report["generator"]["skipped"] > 10 and report["requests"]["total"] <= 6
    assert report["generator"]["skipped"] + report["requests"]["total"] > 20  # every scheduled request is accounted for
    assert set(report["by_edge"]) == {"us-east-1"}  # X-Served-By names the edge; its parameters are not part of it


def test_config_refuses_what_cannot_run() -> None:
    with pytest.raises(ValueError):
        WorkloadConfig(regions={})
    with pytest.raises(ValueError):
        WorkloadConfig(mix={"video": 1.0})
    with pytest.raises(ValueError):
        WorkloadConfig(clients_per_region=100)

