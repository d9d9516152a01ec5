"""The edge end to end: real uvicorn servers on loopback, a scripted origin behind the edge."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cdn.http_server import CHECKED_FIELDS, BodyFile
from edge import app as app_module
from edge.app import ClientRequest, Edge, create_app
from edge.headers import Headers
from edge.origin import member_fields
from edge.settings import EdgeSettings
from tests.scripted_origin import Answer, ScriptedOrigin
from tests.servers import ThreadServer, free_port

FILED_FROM = EdgeSettings.model_fields["sendfile_from"].default  # the smallest body a fast hit sends from a file
FRESH = [("Cache-Control", "max-age=3600")]


@dataclass
class Rig:
    origin: ScriptedOrigin
    edge: Edge
    client: httpx.Client
    url: str

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.client.get(path, **kwargs)  # type: ignore[arg-type]


def make_rig(**settings: object) -> Iterator[Rig]:
    origin = ScriptedOrigin()
    with ThreadServer(origin) as origin_server:
        edge = create_app(EdgeSettings(origin=origin_server.url, id="edge-t", admin_token="secret", **settings))
        with ThreadServer(edge, proxy=True) as edge_server, httpx.Client(base_url=edge_server.url, timeout=10) as client:
            yield Rig(origin, edge, client, edge_server.url)


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from make_rig()


def status_of(response: httpx.Response) -> str:
    return response.headers.get("cache-status", "")


# -- storing and reuse (RFC 9111 §3, §4) -----------------------------------------


def test_miss_then_hit_serves_from_cache_with_age_and_cache_status(rig: Rig) -> None:
    rig.origin.route("/a", Answer(headers=FRESH, body=b"alpha"))
    first = rig.get("/a")
    second = rig.get("/a")
    assert first.text == second.text == "alpha"
    assert status_of(first).startswith("edge-t; fwd=miss")
    assert "stored" in status_of(first)
    assert status_of(second).startswith("edge-t; hit; ttl=")
    assert second.headers["age"].isdigit()
    assert first.headers["x-served-by"] == second.headers["x-served-by"] == "edge-t; region=local"
    assert rig.origin.hits["/a"] == 1


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(("status", "size"), [(200, 8), (404, 8), (200, FILED_FROM + 1)])
def test_a_plain_hit_answers_exactly_as_the_full_request_path_does(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                                                                   method: str, status: int, size: int) -> None:
    # A plain request takes the edge's fast hit path; a CDN-Loop field naming another edge changes
    # nothing but sends the request down the full path: both must give the same answer.
    sent_from_files: list[int] = []
    real_sendfile = os.sendfile
    monkeypatch.setattr(os, "sendfile",
                        lambda *args: sent_from_files.append(real_sendfile(*args)) or sent_from_files[-1])
    rig.origin.route("/same", Answer(status=status, headers=[("Cache-Control", "max-age=600"), ("ETag", '"v"')],
                                     body=os.urandom(size)))
    rig.get("/same")
    plain = rig.client.request(method, rig.url + "/same")
    assert rig.edge.counters["hit_while_parsing"] == 1  # answered by the server as it parsed the request
    large = size >= FILED_FROM
    assert rig.edge.file_bytes == (size if large else 0)  # a large body is held in a file, and sent from it
    assert sum(sent_from_files) == (size if large and method == "GET" else 0)
    full = rig.client.request(method, rig.url + "/same", headers={"CDN-Loop": "another-edge"})
    assert "hit" in status_of(plain) and "hit" in status_of(full)
    assert (plain.status_code, plain.content) == (full.status_code, full.content)
    unstable = {"age", "cache-status"}
    assert [(k, v) for k, v in plain.headers.multi_items() if k not in unstable] == [
        (k, v) for k, v in full.headers.multi_items() if k not in unstable]
    assert status_of(plain).split("; ttl=")[0] == status_of(full).split("; ttl=")[0]
    assert rig.origin.hits["/same"] == 1


def test_the_fast_path_keys_each_host_and_target_apart_and_refuses_what_the_full_path_refuses() -> None:
    edge = create_app(EdgeSettings(origin="http://127.0.0.1:9", id="edge-t", allowed_hosts=["a.example", "b.example"]))

    key = edge.hit_key
    assert key(b"A.example", b"/x") == "a.example/x"  # Host is case-insensitive (RFC 9110 §7.2)
    assert key(b"b.example", b"/x") == "b.example/x"
    assert key(b"a.example", b"/x?v=2") == "a.example/x?v=2"
    assert key(b"a.example", b"/a/../x") == "a.example/x"  # keyed in normal form, as the full path does
    assert key(b"a.example", b"http://b.example/y") == "a.example/y"  # absolute form: the path, as uvicorn reads it
    assert key(b"a.example", b"http://b.example") == ""  # no path at all: refused
    assert key(b"c.example", b"/x") == ""  # not served here
    assert key(b"c.example", b"/x") == ""  # and remembered as not
    # A NUL would make the key of a variant (URL, NUL, what Vary selects) of some other URL.
    assert key(b"a.example", b"/x\0y") == "" and key(b"a.example", b"/x?q=\0") == ""
    # The edge's own paths, however spelled, and targets the shield finds too long go the full way.
    assert key(b"a.example", b"/_edge/stats") == "" and key(b"a.example", b"/%5Fedge/stats") == ""
    assert key(b"a.example", b"/" + b"x" * 8192) == "" and key(b"a.example", b"/" + b"x" * 8190) != ""
    assert not [target for _, target in edge._hit_keys if len(target) > 1000]  # long ones are not remembered
    assert key(b"a.example", "/é".encode()) == ""  # uvicorn reads paths as ASCII: it answers 400
    any_host = create_app(EdgeSettings(origin="http://127.0.0.1:9", id="edge-t"))
    assert any_host.hit_key(b"a.example\0x", b"/x") == ""
    for i in range(app_module.HIT_KEYS + 10):
        key(b"a.example", b"/n%d" % i)
    assert len(edge._hit_keys) <= app_module.HIT_KEYS


def test_a_banned_client_is_refused_even_what_the_fast_path_would_serve(rig: Rig) -> None:
    rig.origin.route("/hot", Answer(headers=FRESH))
    rig.get("/hot")
    assert "hit" in status_of(rig.get("/hot"))
    rig.edge.shield.penalty.bans["127.0.0.1"] = time.monotonic() + 60  # as the penalty box bans
    refused = rig.get("/hot")
    assert refused.status_code == 429 and "banned" in refused.text
    rig.edge.shield.penalty.bans.clear()
    assert "hit" in status_of(rig.get("/hot"))


def test_the_edge_relays_set_cookie_but_never_keeps_a_cookie_itself(rig: Rig) -> None:
    # One client's session cookie must never sit in a client the edge shares among all clients.
    rig.origin.route("/login", Answer(headers=[("Cache-Control", "no-store"), ("Set-Cookie", "session=alice")]))
    rig.origin.route("/next", Answer(headers=[("Cache-Control", "no-store")]))
    assert rig.get("/login").headers["set-cookie"] == "session=alice"
    rig.client.cookies.clear()  # the test's own client keeps it; another client asks next
    rig.get("/next")
    assert "cookie" not in rig.origin.last_headers()


def test_the_origin_gets_its_own_host_and_the_length_of_a_forwarded_body(rig: Rig) -> None:
    rig.origin.route("/form", Answer(headers=[("Cache-Control", "no-store")]))
    rig.client.post("/form", content=b"a=1&b=2", headers={"host": "shop.example"})
    sent = rig.origin.last_headers()
    assert sent["host"] == rig.edge.settings.origin.split("://")[1]  # the client's Host travels as X-Forwarded-Host
    assert sent["x-forwarded-host"] == "shop.example"
    assert sent["content-length"] == "7"
    rig.client.post("/form", content=b"")
    assert rig.origin.last_headers()["content-length"] == "0"  # POST means to carry content (RFC 9110 §8.6)
    rig.client.delete("/form")
    assert "content-length" not in rig.origin.last_headers()  # DELETE without content: no length


@pytest.mark.parametrize(("base", "host", "auth"), [
    ("http://127.0.0.1:9000", b"127.0.0.1:9000", None),
    ("https://Origin.Example:443", b"origin.example", None),
    ("http://[fe80::1%25eth0]:8080", b"[fe80::1]:8080", None),
    ("http://user:p%40ss@origin.example", b"origin.example", b"Basic dXNlcjpwQHNz"),
])
def test_the_origin_url_gives_the_host_field_and_any_credentials(base: str, host: bytes, auth: bytes | None) -> None:
    host_field, auth_field = member_fields(base)
    assert host_field == (b"host", host)
    assert (auth_field[1] if auth_field else None) == auth


@pytest.mark.parametrize("cache_control", ["no-store", "private", "max-age=60, no-store"])
def test_responses_a_shared_cache_must_not_store_are_fetched_every_time(rig: Rig, cache_control: str) -> None:
    rig.origin.route("/p", Answer(headers=[("Cache-Control", cache_control)]))
    rig.get("/p")
    rig.get("/p")
    assert rig.origin.hits["/p"] == 2


def test_set_cookie_responses_are_not_shared_by_default(rig: Rig) -> None:
    rig.origin.route("/c", Answer(headers=FRESH + [("Set-Cookie", "session=1")]))
    rig.get("/c")
    response = rig.get("/c")
    assert rig.origin.hits["/c"] == 2
    assert "detail=set-cookie" in status_of(response)


def test_set_cookie_responses_are_shared_when_the_operator_says_so() -> None:
    for rig in make_rig(cache_set_cookie=True):
        rig.origin.route("/c", Answer(headers=FRESH + [("Set-Cookie", "session=1")]))
        rig.get("/c")
        assert rig.get("/c").headers["set-cookie"] == "session=1"
        assert rig.origin.hits["/c"] == 1


def test_authorization_requests_are_stored_only_when_response_allows(rig: Rig) -> None:
    # RFC 9111 §3.5
    rig.origin.route("/private", Answer(headers=FRESH))
    rig.origin.route("/public", Answer(headers=[("Cache-Control", "public, max-age=60")]))
    auth = {"Authorization": "Bearer x"}
    for path in ("/private", "/public"):
        rig.get(path, headers=auth)
        rig.get(path, headers=auth)
    assert rig.origin.hits["/private"] == 2
    assert rig.origin.hits["/public"] == 1


def test_stale_entry_is_revalidated_with_etag_and_304_freshens_it(rig: Rig) -> None:
    def answer(headers: dict[str, str]) -> Answer:
        if headers.get("if-none-match") == '"v1"':
            return Answer(304, [("ETag", '"v1"'), ("Cache-Control", "max-age=3600"), ("X-Updated", "yes")], b"")
        return Answer(headers=[("ETag", '"v1"'), ("Cache-Control", "max-age=0")], body=b"body-v1")

    rig.origin.route("/v", answer)
    rig.get("/v")
    revalidated = rig.get("/v")
    assert revalidated.text == "body-v1"
    assert revalidated.headers["x-updated"] == "yes"
    assert "fwd=stale; fwd-status=304" in status_of(revalidated)
    assert rig.origin.requests[-1][2]["if-none-match"] == '"v1"'
    hit = rig.get("/v")
    assert status_of(hit).startswith("edge-t; hit")
    assert rig.origin.hits["/v"] == 2


def test_client_conditional_request_gets_304_from_cache(rig: Rig) -> None:
    rig.origin.route("/e", Answer(headers=FRESH + [("ETag", '"abc"')]))
    rig.get("/e")
    response = rig.get("/e", headers={"If-None-Match": 'W/"abc"'})
    assert response.status_code == 304
    assert response.headers["etag"] == '"abc"'
    assert rig.origin.hits["/e"] == 1


def test_head_is_answered_from_a_stored_get(rig: Rig) -> None:
    rig.origin.route("/h", Answer(headers=FRESH, body=b"12345"))
    rig.get("/h")
    response = rig.client.head("/h")
    assert response.status_code == 200
    assert response.headers["content-length"] == "5"
    assert response.content == b""
    assert rig.origin.hits["/h"] == 1


def test_vary_keeps_one_variant_per_selecting_header_value(rig: Rig) -> None:
    rig.origin.route("/lang", lambda h: Answer(headers=FRESH + [("Vary", "Accept-Language")],
                                               body=h.get("accept-language", "none").encode()))
    assert rig.get("/lang", headers={"Accept-Language": "en"}).text == "en"
    assert rig.get("/lang", headers={"Accept-Language": "fr"}).text == "fr"
    assert rig.get("/lang", headers={"Accept-Language": "en"}).text == "en"
    assert rig.get("/lang", headers={"Accept-Language": "fr"}).text == "fr"
    assert rig.origin.hits["/lang"] == 2


def test_vary_star_is_never_reused(rig: Rig) -> None:
    rig.origin.route("/star", Answer(headers=FRESH + [("Vary", "*")]))
    rig.get("/star")
    rig.get("/star")
    assert rig.origin.hits["/star"] == 2


def test_request_max_age_zero_and_no_cache_force_revalidation(rig: Rig) -> None:
    rig.origin.route("/r", Answer(headers=FRESH))
    rig.get("/r")
    rig.get("/r", headers={"Cache-Control": "max-age=0"})
    rig.get("/r", headers={"Pragma": "no-cache"})
    assert rig.origin.hits["/r"] == 3


def test_only_if_cached_gives_504_when_nothing_is_stored(rig: Rig) -> None:
    response = rig.get("/nothing", headers={"Cache-Control": "only-if-cached"})
    assert response.status_code == 504
    assert rig.origin.hits["/nothing"] == 0


def test_unsafe_method_invalidates_target_and_location(rig: Rig) -> None:
    # RFC 9111 §4.4
    rig.origin.route("/item", Answer(headers=FRESH, body=b"old"))
    rig.origin.route("/other", Answer(headers=FRESH, body=b"old"))
    rig.get("/item")
    rig.get("/other")
    rig.origin.route("/item", lambda h: Answer(201, [("Location", "/other")], b"created")
                     if rig.origin.requests[-1][0] == "POST" else Answer(headers=FRESH, body=b"new"))
    rig.origin.route("/other", Answer(headers=FRESH, body=b"new"))
    assert rig.client.post("/item", content=b"x").status_code == 201
    assert rig.get("/item").text == "new"
    assert rig.get("/other").text == "new"


def test_failed_unsafe_method_does_not_invalidate(rig: Rig) -> None:
    rig.origin.route("/keep", lambda h: Answer(500, body=b"err") if rig.origin.requests[-1][0] == "POST"
                     else Answer(headers=FRESH, body=b"kept"))
    rig.get("/keep")
    rig.client.post("/keep", content=b"x")
    assert status_of(rig.get("/keep")).startswith("edge-t; hit")


def test_single_byte_range_is_served_from_stored_full_response(rig: Rig) -> None:
    rig.origin.route("/range", Answer(headers=FRESH, body=b"0123456789"))
    rig.get("/range")
    part = rig.get("/range", headers={"Range": "bytes=2-4"})
    assert part.status_code == 206
    assert part.content == b"234"
    assert part.headers["content-range"] == "bytes 2-4/10"
    assert rig.get("/range", headers={"Range": "bytes=-3"}).content == b"789"
    unsatisfiable = rig.get("/range", headers={"Range": "bytes=50-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == "bytes */10"
    assert rig.origin.hits["/range"] == 1


# -- targeted fields and surrogate keys ------------------------------------------


def test_cdn_cache_control_overrides_cache_control_and_is_not_delivered(rig: Rig) -> None:
    # RFC 9213: the CDN obeys CDN-Cache-Control; browsers still see Cache-Control.
    rig.origin.route("/t", Answer(headers=[("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60"),
                                           ("Surrogate-Key", "a b")]))
    rig.get("/t")
    hit = rig.get("/t")
    assert rig.origin.hits["/t"] == 1
    assert hit.headers["cache-control"] == "no-store"
    assert "cdn-cache-control" not in hit.headers
    assert "surrogate-key" not in hit.headers


def test_admin_purge_by_tag_removes_exactly_the_tagged_entries(rig: Rig) -> None:
    rig.origin.route("/one", Answer(headers=FRESH + [("Surrogate-Key", "products product-1")]))
    rig.origin.route("/two", Answer(headers=FRESH + [("Cache-Tag", "products,product-2")]))
    rig.get("/one")
    rig.get("/two")
    auth = {"Authorization": "Bearer secret"}
    purged = rig.client.post("/_edge/purge", json={"kind": "tag", "values": ["product-1"]}, headers=auth)
    assert purged.json()["purged"] == 1
    rig.get("/one")
    rig.get("/two")
    assert rig.origin.hits["/one"] == 2
    assert rig.origin.hits["/two"] == 1


def test_stored_entries_are_told_apart_by_identity_not_by_value() -> None:
    # Two fetches of the same response are two entries: the request path tells them apart with `is` and
    # keeps them in dicts and sets, so equal fields must not make them equal (nor unhashable).
    settings = EdgeSettings(origin="http://127.0.0.1:9", access_log=False, metrics=False)
    edge = Edge(settings)
    request = ClientRequest.from_scope({"type": "http", "method": "GET", "path": "/same", "raw_path": b"/same",
                                        "query_string": b"", "client": ("127.0.0.1", 1),
                                        "headers": [(b"host", b"shop.example")]}, settings)
    headers = Headers.from_raw([(b"cache-control", b"max-age=60"), (b"date", b"Mon, 30 Nov 2026 02:00:00 GMT")])
    first, second = (edge.make_entry(request, 200, headers, b"body", 1000.0, 1000.0) for _ in range(2))
    assert first != second and len({first, second}) == 2


def test_a_stored_entry_reads_its_fields_tags_and_vary_back_from_its_block_and_key() -> None:
    # An entry keeps its fields as one bytes block and what Vary selected in its key, nothing beside them.
    settings = EdgeSettings(origin="http://127.0.0.1:9", access_log=False, metrics=False)
    edge = Edge(settings)

    def stored(*request_fields: tuple[bytes, bytes]) -> Any:
        request = ClientRequest.from_scope({"type": "http", "method": "GET", "path": "/p", "raw_path": b"/p",
                                            "query_string": b"", "client": ("127.0.0.1", 1),
                                            "headers": [(b"host", b"shop.example"), *request_fields]}, settings)
        headers = Headers.from_raw([(b"cache-control", b"max-age=60"), (b"x-empty", b""),
                                    (b"surrogate-key", b"products p-1"), (b"cache-tag", b"all, p-1"),
                                    (b"vary", b"Accept-Language, X-Mode"), (b"date", b"Mon, 30 Nov 2026 02:00:00 GMT")])
        return edge.make_entry(request, 200, headers, b"body", 1000.0, 1000.0)

    entry = stored((b"accept-language", b"fr, en"))
    assert entry.url == "shop.example/p" and entry.vary == (("accept-language", "en,fr"), ("x-mode", None))
    assert entry.tags == {"products", "p-1", "all"}
    sent = [name for name, _ in entry.wire]
    assert sent == [b"cache-control", b"x-empty", b"vary", b"date"]  # tag fields are held, not sent
    assert entry.headers.get("x-empty") == "" and entry.headers.get("surrogate-key") == "products p-1"
    # A field present but empty, absent, or spelled "None" selects three variants, not two.
    keys = {stored((b"x-mode", b"")).key, stored().key, stored((b"x-mode", b"None")).key}
    assert len(keys) == 3


def test_a_hit_after_a_purge_and_refetch_carries_the_new_fields_with_the_new_body(rig: Rig) -> None:
    # The fast path keeps the fields of the objects it served last read as pairs: never another entry's.
    version = {"n": 1}
    rig.origin.route("/v", lambda h: Answer(headers=FRESH + [("ETag", f'"v{version["n"]}"')],
                                            body=f"body {version['n']}".encode()))
    rig.get("/v")
    assert rig.get("/v").headers["etag"] == '"v1"'  # a hit, its fields now kept read
    version["n"] = 2
    auth = {"Authorization": "Bearer secret"}
    rig.client.post("/_edge/purge", json={"kind": "url", "values": [rig.url + "/v"]}, headers=auth)
    rig.get("/v")  # the refetch
    hit = rig.get("/v")
    assert "hit" in status_of(hit)
    assert (hit.headers["etag"], hit.text) == ('"v2"', "body 2")


def test_soft_purge_marks_stale_so_the_next_request_revalidates(rig: Rig) -> None:
    rig.origin.route("/s", lambda h: Answer(304, [("ETag", '"s"')], b"") if h.get("if-none-match") == '"s"'
                     else Answer(headers=FRESH + [("ETag", '"s"')], body=b"soft"))
    rig.get("/s")
    auth = {"Authorization": "Bearer secret"}
    rig.client.post("/_edge/purge", json={"kind": "url", "values": [rig.url + "/s"], "soft": True}, headers=auth)
    response = rig.get("/s")
    assert response.text == "soft"
    assert "fwd=stale; fwd-status=304" in status_of(response)


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({}, {"kind": "all"}, 401),
    ({"Authorization": "Bearer wrong"}, {"kind": "all"}, 403),
    ({"Authorization": "Bearer secret"}, {"kind": "nope"}, 422),
    ({"Authorization": "Bearer secret"}, {"kind": "tag", "values": []}, 422),
    ({"Authorization": "Bearer secret"}, {"kind": "tag", "values": ["x"] * 257}, 422),
])
def test_admin_purge_refuses_bad_requests_with_a_clear_error(rig: Rig, headers: dict, body: dict, status: int) -> None:
    response = rig.client.post("/_edge/purge", json=body, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]


# -- toward the origin ----------------------------------------------------------


def test_hop_by_hop_fields_are_removed_and_proxy_fields_added(rig: Rig) -> None:
    rig.origin.route("/hop", Answer(headers=FRESH + [("Connection", "x-secret"), ("X-Secret", "1"), ("Keep-Alive", "timeout=5")]))
    response = rig.get("/hop", headers={"Connection": "x-drop", "X-Drop": "1", "Proxy-Authorization": "p"})
    sent = rig.origin.last_headers()
    assert "x-drop" not in sent and "proxy-authorization" not in sent
    assert sent["via"].endswith("edge-t")
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-host"] == rig.url.removeprefix("http://")
    assert "x-secret" not in response.headers
    assert "x-secret" not in rig.get("/hop").headers


def test_absolute_form_target_never_reaches_another_server(rig: Rig) -> None:
    rig.origin.route("/abs", Answer(headers=FRESH, body=b"ours"))
    port = int(rig.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET http://example.invalid/abs HTTP/1.1\r\nHost: example.invalid\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.endswith(b"ours")
    assert rig.origin.hits["/abs"] == 1


def test_hosts_outside_allowed_hosts_get_400() -> None:
    for rig in make_rig(allowed_hosts=["shop.example"]):
        rig.origin.route("/x", Answer(headers=FRESH))
        assert rig.get("/x", headers={"Host": "evil.example"}).status_code == 400
        assert rig.get("/x", headers={"Host": "shop.example"}).status_code == 200
        assert rig.origin.hits["/x"] == 1


# -- errors ---------------------------------------------------------------------


def test_origin_refusing_connections_gives_502() -> None:
    edge = create_app(EdgeSettings(origin=f"http://127.0.0.1:{free_port()}"))
    with ThreadServer(edge, proxy=True) as server:
        response = httpx.get(server.url + "/x")
    assert response.status_code == 502
    assert response.text.strip()


def test_origin_slower_than_the_timeout_gives_504() -> None:
    for rig in make_rig(origin_timeout=0.3):
        rig.origin.route("/slow", Answer(headers=FRESH, delay=2.0))
        response = rig.get("/slow")
        assert response.status_code == 504


def test_origin_status_outside_100_to_599_gives_502(rig: Rig) -> None:
    rig.origin.route("/weird", Answer(status=999))
    assert rig.get("/weird").status_code == 502


def test_stale_if_error_serves_stale_when_origin_fails(rig: Rig) -> None:
    rig.origin.route("/sie", Answer(headers=[("Cache-Control", "max-age=0, stale-if-error=60")], body=b"stale"))
    rig.get("/sie")
    rig.origin.route("/sie", Answer(500, body=b"boom"))
    response = rig.get("/sie")
    assert response.status_code == 200
    assert response.text == "stale"
    assert "detail=stale-if-error" in status_of(response)


def test_stale_while_revalidate_serves_stale_and_refreshes_in_background(rig: Rig) -> None:
    rig.origin.route("/swr", Answer(headers=[("Cache-Control", "max-age=1, stale-while-revalidate=60")], body=b"v1"))
    rig.get("/swr")
    time.sleep(1.2)
    rig.origin.route("/swr", Answer(headers=[("Cache-Control", "max-age=60")], body=b"v2", delay=0.2))
    stale = [rig.get("/swr") for _ in range(5)]
    assert all(r.text == "v1" for r in stale)
    deadline = time.monotonic() + 5
    while rig.get("/swr").text != "v2":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rig.origin.hits["/swr"] == 2  # one background fetch, whatever the traffic


def test_cut_off_body_is_never_stored(rig: Rig) -> None:
    rig.origin.route("/cut", Answer(headers=FRESH, body=[b"a" * 1000, b"b" * 1000], cut_after_first_chunk=True))
    with pytest.raises(httpx.HTTPError):
        rig.get("/cut")
    rig.origin.route("/cut", Answer(headers=FRESH, body=b"whole"))
    assert rig.get("/cut").text == "whole"
    assert rig.origin.hits["/cut"] == 2


def test_objects_larger_than_the_cap_stream_through_uncached() -> None:
    for rig in make_rig(max_object_size=1000):
        rig.origin.route("/big", Answer(headers=FRESH, body=b"x" * 5000))
        assert len(rig.get("/big").content) == 5000
        assert len(rig.get("/big").content) == 5000
        assert rig.origin.hits["/big"] == 2


def test_miss_streams_first_byte_before_the_last_arrives(rig: Rig) -> None:
    rig.origin.route("/stream", Answer(headers=FRESH, body=[b"first", b"second"], chunk_delay=1.0))
    started = time.monotonic()
    with rig.client.stream("GET", "/stream") as response:
        chunks = response.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = b"".join(chunks)
    assert first == b"first"
    assert first_at < 0.9
    assert rest == b"second"
    assert status_of(rig.get("/stream")).startswith("edge-t; hit")


def test_malformed_header_values_from_origin_do_not_crash_the_edge(rig: Rig) -> None:
    rig.origin.route("/odd", Answer(headers=[("Cache-Control", 'max-age="12, ,=,'), ("Age", "-1"),
                                             ("Expires", "yesterday"), ("Vary", ",,,"), ("Date", "0")]))
    assert rig.get("/odd").status_code == 200
    assert rig.get("/odd").status_code == 200


def test_bytes_past_a_too_short_content_length_never_answer_another_request() -> None:
    # An origin whose Content-Length is shorter than its body leaves bytes on the connection;
    # reusing it would hand the next request those bytes as its answer (an edge/origin desync).
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    served: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                buffer = b""
                while True:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        break
                    if not data:
                        break
                    buffer += data
                    while b"\r\n\r\n" in buffer:
                        head, buffer = buffer.split(b"\r\n\r\n", 1)
                        path = head.split(b" ")[1].decode()
                        served.append(path)
                        body = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" if path == "/short" else path.encode()
                        length = 5 if path == "/short" else len(body)
                        conn.sendall(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n%s"
                                     % (length, body))

    threading.Thread(target=serve, daemon=True).start()
    edge = create_app(EdgeSettings(origin=f"http://127.0.0.1:{port}"))
    try:
        with ThreadServer(edge, proxy=True) as server, httpx.Client(base_url=server.url) as client:
            client.get("/short")
            for i in range(5):
                response = client.get(f"/next-{i}")
                assert response.status_code == 200
                assert response.text == f"/next-{i}"
    finally:
        listener.close()
    assert served.count("/next-0") == 1  # answered once, not retried after a desync


@pytest.mark.parametrize(("value", "checked"), [(b"plain", True), (b"odd\x01", False)])
def test_a_hit_tells_the_server_its_fields_are_checked_only_when_they_pass(value: bytes, checked: bool) -> None:
    # The server writes fields marked as checked without looking at them: a stored field uvicorn would refuse
    # (no origin reply carries one past the edge's client, but the store does not know where fields came from)
    # goes out unmarked, for uvicorn to check.
    edge = create_app(EdgeSettings(origin="http://127.0.0.1:9", id="edge-t"))
    scope = {"type": "http", "method": "GET", "path": "/f", "raw_path": b"/f", "query_string": b"",
             "client": ("127.0.0.1", 1), "headers": [(b"host", b"127.0.0.1")]}
    request = ClientRequest.from_scope(scope, edge.settings)
    fields = Headers.from_raw([(b"cache-control", b"max-age=600"), (b"x-field", value)])
    assert edge.put(request, edge.make_entry(request, 200, fields, b"body", time.time(), time.time()), None, 0)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    assert asyncio.run(edge.fresh_hit(scope, send))
    assert (sent[0].get(CHECKED_FIELDS) == 4) is checked and (b"x-field", value) in sent[0]["headers"]


# -- answered while the server parses (`Edge.answer_now`) --------------------------------------
def edge_holding(fields: list[tuple[bytes, bytes]], body: bytes = b"body", **settings: Any) -> Edge:
    """An edge with `fields` and `body` stored, fresh for ten minutes, for GET http://127.0.0.1/f (no access log)."""
    edge = create_app(EdgeSettings(origin="http://127.0.0.1:9", id="edge-t", **{"access_log": False, **settings}))
    request = ClientRequest.from_scope(hit_scope(), edge.settings)
    stored = Headers.from_raw([(b"cache-control", b"max-age=600"), *fields])
    assert edge.put(request, edge.make_entry(request, 200, stored, body, time.time(), time.time()), None, 0)
    return edge


def hit_scope(method: str = "GET", path: str = "/f", headers: list[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
            "client": ("127.0.0.1", 1), "headers": [(b"host", b"127.0.0.1"), *headers]}


def answered_now(edge: Edge, scope: dict[str, Any]) -> tuple[int, bytes, bytes | BodyFile] | None:
    """`edge.answer_now` for the request `scope` describes, called as `cdn.http_server` calls it."""
    target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    return edge.answer_now(scope["method"].encode(), target, scope["headers"], lambda: scope)


def stopped_clock(monkeypatch: pytest.MonkeyPatch, at: float) -> list[float]:
    """The edge's clock, stopped at `at`: set [0] to move it."""
    now = [at]
    monkeypatch.setattr(app_module, "time", type("Clock", (), {"time": staticmethod(lambda: now[0]),
                                                             "perf_counter": staticmethod(time.perf_counter)}))
    return now


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_an_answer_now_is_the_fast_hit_as_field_lines(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    edge = edge_holding([(b"content-type", b"text/plain"), (b"etag", b'"v"')])
    stopped_clock(monkeypatch, time.time() + 5)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    assert asyncio.run(edge.fresh_hit(hit_scope(method), send))
    start, body = sent
    lines = b"".join(b"%s: %s\r\n" % field for field in start["headers"])
    assert answered_now(edge, hit_scope(method)) == (start["status"], lines, body["body"])
    assert b"age: 5\r\n" in lines and b"cache-status: edge-t; hit; ttl=594\r\n" in lines
    assert edge.counters["hit"] == 2 and edge.counters["hit_while_parsing"] == 1


@pytest.mark.parametrize(("settings", "scope", "fields"), [
    ({}, hit_scope(path="/_edge/metrics"), []),
    ({}, hit_scope("POST"), []),
    ({}, hit_scope(headers=[(b"x-big", b"x" * 40_000)]), []),  # over the shield's size limits: 431
    ({}, hit_scope(headers=[(b"x-n", b"%d" % n) for n in range(100)]), []),
    ({"shield": {"rules": [{"name": "all", "key": ["ip"], "scope": "all", "rate": 100, "burst": 100}]}},
     hit_scope(), []),  # a rule that counts every request
    ({}, hit_scope(), [(b"x-odd", b"v\x01")]),  # a stored field uvicorn would refuse to write
])
def test_answer_now_leaves_to_the_app_what_it_must_see(settings: dict[str, Any], scope: dict[str, Any],
                                                       fields: list[tuple[bytes, bytes]]) -> None:
    edge = edge_holding(fields, **settings)
    assert answered_now(edge, scope) is None
    assert edge.counters.get("hit", 0) == 0 and not edge.shield.size_refusals  # counted where it is answered


def test_answer_now_leaves_a_banned_client_to_the_app() -> None:
    edge = edge_holding([])
    edge.shield.penalty.bans["127.0.0.1"] = time.monotonic() + 60
    assert answered_now(edge, hit_scope()) is None


def test_the_asgi_fast_path_leaves_a_scope_without_raw_path_to_the_full_path() -> None:
    edge = edge_holding([])  # a server that gives the decoded path alone: no target as it came to key
    scope = hit_scope()
    del scope["raw_path"]

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent")

    assert not asyncio.run(edge.fresh_hit(scope, send))


def holding_more(edge: Edge) -> Callable[[str, bytes], None]:
    """Stores, for `edge_holding`'s edge, `body` fresh for ten minutes for GET http://127.0.0.1`path`."""
    def hold(path: str, body: bytes) -> None:
        request = ClientRequest.from_scope(hit_scope(path=path), edge.settings)
        stored = Headers.from_raw([(b"cache-control", b"max-age=600")])
        assert edge.put(request, edge.make_entry(request, 200, stored, body, time.time(), time.time()), None, 0)
    return hold


def body_answered(edge: Edge, path: str) -> bytes | BodyFile:
    answer = answered_now(edge, hit_scope(path=path))
    assert answer is not None
    return answer[2]


@pytest.mark.parametrize("limit", ["bytes", "files"])
def test_large_bodies_are_answered_from_files_within_the_edge_s_budget(monkeypatch: pytest.MonkeyPatch,
                                                                       limit: str) -> None:
    size = FILED_FROM
    if limit == "files":
        monkeypatch.setattr(app_module, "FILES", 1)
    edge = edge_holding([], body=b"a" * size, sendfile_bytes=size if limit == "bytes" else 4 * size)
    hold = holding_more(edge)
    first = body_answered(edge, "/f")
    assert isinstance(first, BodyFile) and first.data == b"a" * size and (edge.file_bytes, edge.files) == (size, 1)
    assert body_answered(edge, "/f") is first and answered_now(edge, hit_scope("HEAD"))[2] == b""  # type: ignore[index]
    hold("/g", b"g" * size)
    assert body_answered(edge, "/g") == b"g" * size and edge.file_bytes == size  # over the budget: from memory
    hold("/f", b"b" * size)  # a new body for /f: its file goes, and one with the new body comes
    second = body_answered(edge, "/f")
    assert isinstance(second, BodyFile) and second.data == b"b" * size and first.fd == -1 and edge.file_bytes == size
    hold("/f", b"c" * (size - 1))  # below FILED_FROM: from memory, and the budget is free again
    assert body_answered(edge, "/f") == b"c" * (size - 1) and second.fd == -1
    assert (edge.file_bytes, edge.files) == (0, 0)


@pytest.mark.parametrize("sendfile_from", [1000, 1001])
def test_sendfile_from_is_the_smallest_body_answered_from_a_file(sendfile_from: int) -> None:
    edge = edge_holding([], body=b"a" * 1000, sendfile_from=sendfile_from)
    assert isinstance(body_answered(edge, "/f"), BodyFile) == (sendfile_from <= 1000)


def test_the_files_of_bodies_no_longer_stored_go_to_bodies_served_now() -> None:
    size = FILED_FROM
    edge = edge_holding([], body=b"a" * size, sendfile_bytes=size)
    holding_more(edge)("/g", b"g" * size)
    first = body_answered(edge, "/f")
    assert isinstance(first, BodyFile) and isinstance(body_answered(edge, "/g"), bytes)  # the budget is /f's
    edge.share_files()
    assert first.fd >= 0  # still stored: kept
    assert edge.store.delete("127.0.0.1/f")  # purged, say, and not asked for since
    edge.share_files()
    assert first.fd == -1 and edge.file_bytes == FILED_FROM  # now /g's
    assert isinstance(body_answered(edge, "/g"), BodyFile)


def test_a_running_edge_closes_the_file_of_a_body_it_no_longer_stores(rig: Rig) -> None:
    rig.origin.route("/big", Answer(headers=[("Cache-Control", "max-age=600")], body=b"b" * FILED_FROM))
    rig.get("/big")
    assert rig.get("/big").content == b"b" * FILED_FROM and rig.edge.files == 1
    host = rig.url.removeprefix("http://")
    assert rig.edge.store.delete(host + "/big")  # gone without a request for it since (a purge, an eviction)
    deadline = time.monotonic() + 5 * app_module.FILES_CHECKED_EVERY
    while rig.edge.files and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (rig.edge.files, rig.edge.file_bytes) == (0, 0)  # the sweeper's share_files closed it


def test_a_body_with_no_file_is_answered_from_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memfd(name: str, flags: int = 0) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    edge = edge_holding([], body=b"a" * FILED_FROM)
    assert body_answered(edge, "/f") == b"a" * FILED_FROM
    assert edge.counters["body_file_failed"] == 1 and edge.file_bytes == 0


def test_the_age_an_answer_now_gives_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    edge = edge_holding([])
    now = stopped_clock(monkeypatch, time.time() + 0.2)
    ages = []
    for step in (0.0, 0.3, 1.0, 0.2, 600):
        now[0] += step
        answer = answered_now(edge, hit_scope())
        ages.append(None if answer is None else answer[1].split(b"age: ")[1].split(b"\r\n")[0])
    assert ages == [b"0", b"0", b"1", b"1", None]  # and no longer fresh after its ten minutes
