"""Hardening (issue 11): bad input, cache poisoning, purge and admin abuse, shield evasion, arbitrary origin fields.

The edge under attack runs as in production: `python -m cdn edge` (uvicorn, httptools), in front of a
scripted origin that records every request exactly as it arrived (raw target, repeated fields, body).
Raw-socket tests write the request bytes by hand (`tests.raw_http`). Each bad input must get a clear
4xx (or a closed connection when the server refuses outright), reach nothing upstream, and leave the
edge serving the next request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.app import Edge
from edge.app import create_app as create_edge
from edge.settings import EdgeSettings
from purge_api.app import create_app as create_purge_api
from purge_api.log import MemoryPurgeLog
from purge_api.settings import PurgeApiSettings
from tests.raw_http import Exchange, exchange, request, stream_until_answered
from tests.scripted_origin import Answer, ScriptedOrigin
from tests.servers import ROOT, ThreadServer, cdn_process, free_port, wait_for_port

ADMIN = "admin-secret"
HOST = "shop.example"
FRESH = [("Cache-Control", "max-age=3600")]
NO_STORE = [("Cache-Control", "no-store")]
SLOW_CLIENT_DEADLINE = 10.0  # seconds after its last byte by which a stalled client must be disconnected
CLIENT_TIMEOUT = 2.0  # the shared edge's client_header_timeout and client_body_timeout
SHIELD_RULE = {"rules": [{"name": "origin", "key": ["ip"], "scope": "origin", "rate": 5, "burst": 5}]}


_unique = itertools.count()  # fresh paths, so cases never share cache entries


# -- the rig ---------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the origin received it."""

    method: str
    target: bytes  # raw path and query, as on the wire
    path: str  # decoded path: what the origin routes on
    headers: list[tuple[bytes, bytes]]
    body: bytearray

    def header(self, name: str) -> str | None:
        values = [v.decode("latin-1") for k, v in self.headers if k == name.encode()]
        return ", ".join(values) if values else None


class RecordingOrigin:
    """A ScriptedOrigin that also keeps every request as it arrived; unrouted paths get `fallback(path, headers)`."""

    def __init__(self) -> None:
        self.script = ScriptedOrigin()
        self.seen: list[Seen] = []
        self.fallback: Callable[[str, dict[str, str]], Answer] | None = None

    def route(self, target: str, answer: Any) -> None:
        self.script.route(target, answer)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.script(scope, receive, send)
            return
        query = scope.get("query_string") or b""
        seen = Seen(scope["method"], scope.get("raw_path", b"") + (b"?" + query if query else b""), scope["path"],
                    list(scope["headers"]), bytearray())
        self.seen.append(seen)
        path = scope["path"]
        if self.fallback is not None and path not in self.script.handlers:
            fallback = self.fallback
            self.script.route(path, lambda headers: fallback(path, headers))

        async def recorded() -> dict[str, Any]:
            message = await receive()
            seen.body += message.get("body", b"")
            return message

        await self.script(scope, recorded, send)


@dataclass
class Stack:
    origin: RecordingOrigin
    other: RecordingOrigin  # a second server: the "other host" an open proxy would reach
    other_authority: str  # its host:port
    port: int
    url: str

    def raw(self, data: bytes, **kwargs: Any) -> Exchange:
        return exchange(self.port, data, **kwargs)

    def get(self, target: str, host: str = HOST, headers: list[tuple[str, str]] = ()) -> Exchange:
        return self.raw(request("GET", target, host, list(headers)))

    def admin_purge(self, payload: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(self.url + "/_edge/purge", json=payload, headers={"Authorization": f"Bearer {ADMIN}"})
        assert response.status_code == 200, response.text
        return response.json()

    def assert_still_serving(self) -> None:
        """A normal request on a new connection, all the way to the origin, still works."""
        answer = self.get("/alive")
        assert answer.status == 200 and answer.responses[0].body == b"alive", answer


def edge_args(origin: str, *extra: str) -> list[str]:
    # No access log: nothing reads the subprocess's stdout (the last test of this file runs with it).
    return ["edge", "--origin", origin, "--id", "edge-h", "--admin-token", ADMIN, "--log-level", "critical",
            "--no-access-log", *extra]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    origin, other = RecordingOrigin(), RecordingOrigin()
    origin.route("/alive", Answer(headers=NO_STORE, body=b"alive"))
    other.fallback = lambda path, headers: Answer(headers=FRESH, body=b"OTHER HOST")
    with ThreadServer(origin) as origin_server, ThreadServer(other) as other_server:
        # Short client deadlines, so the slow clients below are cut off well within SLOW_CLIENT_DEADLINE.
        with cdn_process(*edge_args(origin_server.url, "--shield", '{"rules": []}', "--client-header-timeout",
                                    str(CLIENT_TIMEOUT), "--client-body-timeout", str(CLIENT_TIMEOUT))) as url:
            yield Stack(origin, other, f"127.0.0.1:{other_server.port}", int(url.rsplit(":", 1)[1]), url)


@pytest.fixture
def edge(stack: Stack) -> Stack:
    """The shared edge, with the origins' records cleared."""
    stack.origin.seen.clear()
    stack.other.seen.clear()
    return stack


def refused(answer: Exchange) -> bool:
    """A clear 4xx, or a connection the server closed without answering."""
    if answer.responses:
        return 400 <= answer.responses[0].status < 500
    return answer.closed


def origin_requests_are_sane(seen: list[Seen], expected_body: bytes | None = None) -> None:
    """What reached the origin for one client request: one request, nothing smuggled, no broken fields."""
    assert len(seen) <= 1, [(s.method, s.target) for s in seen]
    for s in seen:
        assert b"smuggled" not in s.target
        for name, value in s.headers:
            assert not any(c in name + value for c in b"\r\n\x00"), (name, value)
        if expected_body is not None:
            assert bytes(s.body) == expected_body


# -- bad input: requests the edge must refuse ---------------------------------------------------


def post(headers: list[tuple[str, str]] | list[bytes], body: bytes = b"abc", version: str = "HTTP/1.1") -> bytes:
    return request("POST", "/bad", HOST, headers, body, version)


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\n"

MUST_REFUSE: dict[str, bytes] = {
    # request lines
    "delimiter-in-method": b"G(T /bad HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    "nul-in-method": b"GE\x00T /bad HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    "missing-target": b"GET HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    "lowercase-version": b"GET /bad http/1.1\r\nHost: shop.example\r\n\r\n",
    "no-version-http0.9-form": b"GET /bad\r\nHost: shop.example\r\n\r\n",  # RFC 9112 §3 needs HTTP-version
    "version-2.0": b"GET /bad HTTP/2.0\r\nHost: shop.example\r\n\r\n",  # not an HTTP/1 request
    "version-1.10": b"GET /bad HTTP/1.10\r\nHost: shop.example\r\n\r\n",
    "version-3.0": b"GET /bad HTTP/3.0\r\nHost: shop.example\r\n\r\n",
    "leading-space": b" GET /bad HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    "bare-cr-after-request-line": b"GET /bad HTTP/1.1\rHost: shop.example\r\n\r\n",
    "bare-cr-between-fields": b"GET /bad HTTP/1.1\r\nHost: shop.example\rX-A: 1\r\n\r\n",
    "authority-form-get": b"GET shop.example:80 HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    "asterisk-form-get": b"GET * HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    # request targets
    "nul-in-target": request(target="/bad\x00x"),
    "ctl-in-target": request(target="/bad\x01x"),
    "del-in-target": request(target="/bad\x7fx"),
    "tab-in-target": request(target="/bad\tx"),
    "space-in-target": b"GET /ba d HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    "raw-8bit-in-target": request(target="/bad\xffx"),
    # field names
    "space-in-name": request(headers=[b"X Bad: 1"]),
    "space-before-colon": request(headers=[b"X-Bad : 1"]),
    "nul-in-name": request(headers=[b"X-B\x00ad: 1"]),
    "ctl-in-name": request(headers=[b"X-B\x01ad: 1"]),
    "delimiter-in-name": request(headers=[b"X(Bad): 1"]),
    "8bit-in-name": request(headers=[b"X-\xffad: 1"]),
    "empty-name": request(headers=[b": 1"]),
    "no-colon": request(headers=[b"X-Bad"]),
    # field values
    "nul-in-value": request(headers=[b"X-Bad: a\x00b"]),
    "ctl-in-value": request(headers=[b"X-Bad: a\x01b"]),
    "del-in-value": request(headers=[b"X-Bad: a\x7fb"]),
    "bare-cr-in-value": request(headers=[b"X-Bad: a\rX-Injected: 1"]),
    # obs-fold (RFC 9112 §5.2: reject, or replace with SP; a proxy must not forward it)
    "obs-fold-space": request(headers=[b"X-Bad: a", b" folded"]),
    "obs-fold-tab": request(headers=[b"X-Bad: a", b"\tfolded"]),
    "obs-fold-host": request(headers=[b" evil.example"]),
    "whitespace-before-first-field": b"GET /bad HTTP/1.1\r\n Host: shop.example\r\n\r\n",
    # message framing (RFC 9112 §6)
    "two-different-content-lengths": post([("Content-Length", "3"), ("Content-Length", "5")], b"abcde"),
    "two-equal-content-lengths": post([("Content-Length", "3"), ("Content-Length", "3")]),
    "content-length-list": post([("Content-Length", "3, 3")]),
    "content-length-plus": post([("Content-Length", "+3")]),
    "content-length-negative": post([("Content-Length", "-3")]),
    "content-length-hex": post([("Content-Length", "0x3")]),
    "content-length-empty": post([("Content-Length", "")]),
    "content-length-overflow": post([("Content-Length", "99999999999999999999999")]),
    "cl-then-te": post([("Content-Length", "4"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n" + SMUGGLED),
    "te-then-cl": post([("Transfer-Encoding", "chunked"), ("Content-Length", "4")], b"0\r\n\r\n" + SMUGGLED),
    "te-chunked-not-last": post([("Transfer-Encoding", "chunked, identity")], b"3\r\nabc\r\n0\r\n\r\n"),
    "te-gzip-only": post([("Transfer-Encoding", "gzip")]),
    "te-unknown": post([("Transfer-Encoding", "xchunked")], b"3\r\nabc\r\n0\r\n\r\n"),
    "te-chunked-twice": post([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
                             b"3\r\nabc\r\n0\r\n\r\n"),
    "te-space-before-colon": post([b"Transfer-Encoding : chunked"], b"3\r\nabc\r\n0\r\n\r\n"),
    "te-vertical-tab": post([b"Transfer-Encoding:\x0bchunked"], b"3\r\nabc\r\n0\r\n\r\n"),
    "te-nul": post([b"Transfer-Encoding: chunked\x00"], b"3\r\nabc\r\n0\r\n\r\n"),
    "te-with-parameter": post([("Transfer-Encoding", "chunked;q=1")], b"3\r\nabc\r\n0\r\n\r\n"),
    "chunk-size-not-hex": post([("Transfer-Encoding", "chunked")], b"3x\r\nabc\r\n0\r\n\r\n"),
    "chunk-size-negative": post([("Transfer-Encoding", "chunked")], b"-3\r\nabc\r\n0\r\n\r\n"),
    "chunk-size-overflow": post([("Transfer-Encoding", "chunked")], b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n"),
    "chunk-without-crlf": post([("Transfer-Encoding", "chunked")], b"3\r\nabcX0\r\n\r\n" + SMUGGLED),
    # CONNECT: the edge is no tunnel
    "connect-authority": b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n" + SMUGGLED,
    "connect-evil": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    "connect-absolute-form": b"CONNECT http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    "trace": b"TRACE /bad HTTP/1.1\r\nHost: shop.example\r\nAuthorization: Bearer secret\r\n\r\n",
    # Host
    "no-host": request(host=None),
    "empty-host": request(host=""),
    "two-hosts": request(headers=[("Host", "evil.example")]),
    "userinfo-in-host": request(host="user@evil.example"),
    "slash-in-host": request(host="evil.example/x"),
    "backslash-in-host": request(host="evil.example\\x"),
    "space-in-host": request(host="shop.example evil.example"),
    "comma-in-host": request(host="shop.example, evil.example"),
}

@pytest.mark.parametrize("data", list(MUST_REFUSE.values()), ids=list(MUST_REFUSE))
def test_malformed_request_is_refused_and_reaches_nothing_upstream(edge: Stack, data: bytes) -> None:
    answer = edge.raw(data, methods=["GET", "GET"] if data.endswith(SMUGGLED) else ["GET"], timeout=3)
    assert answer.error is None, answer.error
    assert refused(answer), answer
    assert all(400 <= s < 500 for s in answer.statuses), answer.statuses  # never the smuggled request's answer
    assert edge.origin.seen == [], [(s.method, s.target) for s in edge.origin.seen]
    assert edge.other.seen == []
    edge.assert_still_serving()


@pytest.mark.parametrize(("method", "target"), [("CONNECT", "http://evil.example/"), ("TRACE", "/bad")])
def test_connect_and_trace_get_405_naming_the_methods_served(edge: Stack, method: str, target: str) -> None:
    # The edge is no tunnel (RFC 9110 §9.3.6), and a TRACE would echo the fields it adds back (§9.3.8).
    answer = edge.raw(request(method, target, HOST))
    assert answer.status == 405, answer
    assert "GET" in answer.responses[0].headers["allow"]
    assert edge.origin.seen == []


# Inputs HTTP lets a server tolerate: refused, or served with exactly the request the client meant.
MAY_ACCEPT: dict[str, tuple[bytes, bytes | None]] = {
    # "get" is another method than "GET" (methods are case-sensitive tokens): refuse it or pass it on
    "lowercase-method": (b"get /bad HTTP/1.1\r\nHost: shop.example\r\n\r\n", None),
    "higher-minor-version": (b"GET /bad HTTP/1.2\r\nHost: shop.example\r\n\r\n", None),  # RFC 9112 §2.3: as 1.1
    "double-space-in-request-line": (b"GET  /bad HTTP/1.1\r\nHost: shop.example\r\n\r\n", None),  # RFC 9112 §3
    "empty-line-before-request": (b"\r\n" + request(target="/bad"), None),  # RFC 9112 §2.2
    "lf-only-line-ends": (b"GET /bad HTTP/1.1\nHost: shop.example\n\n", None),  # RFC 9112 §2.2 MAY
    "lf-in-value": (request(target="/bad", headers=[b"X-Bad: a\nX-Second: 1"]), None),
    "content-length-with-ows": (post([b"Content-Length:  3 "]), b"abc"),
    "te-identity-then-chunked": (post([("Transfer-Encoding", "identity, chunked")], b"3\r\nabc\r\n0\r\n\r\n"), b"abc"),
    "te-capitalised": (post([("Transfer-Encoding", "Chunked")], b"3\r\nabc\r\n0\r\n\r\n"), b"abc"),
    "te-empty-list-element": (post([("Transfer-Encoding", ",chunked")], b"3\r\nabc\r\n0\r\n\r\n"), b"abc"),
    "te-gzip-then-chunked": (post([("Transfer-Encoding", "gzip, chunked")], b"3\r\nabc\r\n0\r\n\r\n"), None),
    "chunk-extension": (post([("Transfer-Encoding", "chunked")], b"3;name=value\r\nabc\r\n0\r\n\r\n"), b"abc"),
    "get-with-body-holding-a-request": (request(target="/bad", headers=[("Content-Length", str(len(SMUGGLED)))],
                                                body=SMUGGLED), b""),
    "post-body-holding-a-request": (post([("Content-Length", str(len(SMUGGLED)))], SMUGGLED), SMUGGLED),
    "expect-100-continue": (post([("Expect", "100-continue"), ("Content-Length", "3")]), b"abc"),
    "h2c-upgrade": (request(target="/bad", headers=[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                                                    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")]), None),
}


@pytest.mark.parametrize(("data", "body"), list(MAY_ACCEPT.values()), ids=list(MAY_ACCEPT))
def test_tolerable_input_is_refused_or_forwarded_as_exactly_one_request(edge: Stack, data: bytes,
                                                                         body: bytes | None) -> None:
    edge.origin.route("/bad", Answer(headers=NO_STORE, body=b"fine"))
    answer = edge.raw(data, timeout=3)
    assert answer.error is None, answer.error
    if refused(answer):
        assert edge.origin.seen == []
    else:
        assert answer.status == 200 and answer.responses[0].body == b"fine", answer
        assert len(edge.origin.seen) == 1
        assert edge.origin.seen[0].path == "/bad"
    origin_requests_are_sane(edge.origin.seen, body)
    edge.assert_still_serving()


SMUGGLING = {
    "cl-te": post([("Content-Length", "4"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n" + SMUGGLED),
    "te-cl": post([("Transfer-Encoding", "chunked"), ("Content-Length", "48")], b"0\r\n\r\n" + SMUGGLED),
    "te-obfuscated-cl": post([("Transfer-Encoding", "xchunked"), ("Content-Length", "5")], b"0\r\n\r\n" + SMUGGLED),
    "te-te": post([("Transfer-Encoding", "chunked"), ("Transfer-encoding", "cow")], b"0\r\n\r\n" + SMUGGLED),
    "get-cl-body": request(target="/bad", headers=[("Content-Length", str(len(SMUGGLED)))], body=SMUGGLED),
    "get-cl-zero-then-request": request(target="/bad", headers=[("Content-Length", "0")]) + SMUGGLED,
    "http1.0-chunked-keep-alive": post([("Transfer-Encoding", "chunked"), ("Connection", "keep-alive")],
                                      b"0\r\n\r\n", version="HTTP/1.0") + SMUGGLED,
}


@pytest.mark.parametrize("data", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_one_client_request_never_becomes_two_origin_requests(edge: Stack, data: bytes) -> None:
    # A pipelined follow-up shows how the edge split the bytes: every origin request must be one the
    # client meant to send as a request, and the "smuggled" one may only arrive as a request of its own
    # when the client's first request had clearly ended (Content-Length: 0).
    edge.origin.route("/bad", Answer(headers=NO_STORE, body=b"first"))
    edge.origin.route("/smuggled", Answer(headers=NO_STORE, body=b"second"))
    answer = edge.raw(data, methods=["POST", "GET"], timeout=1.5)
    assert answer.error is None, answer.error
    meant_as_two = data.startswith(b"GET /bad HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 0\r\n\r\n")
    smuggled = [s for s in edge.origin.seen if s.path == "/smuggled"]
    assert len(smuggled) == (1 if meant_as_two else 0), [(s.method, s.target) for s in edge.origin.seen]
    assert len(edge.origin.seen) <= len(answer.responses)
    edge.assert_still_serving()


def test_http_1_0_message_with_transfer_encoding_closes_the_connection(edge: Stack) -> None:
    # RFC 9112 §6.1: the framing of an HTTP/1.0 message with Transfer-Encoding is faulty: close after it.
    edge.origin.route("/bad", Answer(headers=NO_STORE, body=b"fine"))
    data = post([("Transfer-Encoding", "chunked"), ("Connection", "keep-alive")], b"3\r\nabc\r\n0\r\n\r\n",
                version="HTTP/1.0")
    answer = edge.raw(data + request(target="/alive"), methods=["POST", "GET"], timeout=3)
    assert len(answer.responses) <= 1
    assert answer.closed or (answer.responses and answer.responses[0].headers.get("connection") == "close")
    edge.assert_still_serving()


def test_trailer_fields_are_not_forwarded_as_header_fields(edge: Stack) -> None:
    edge.origin.route("/bad", Answer(headers=NO_STORE, body=b"fine"))
    data = post([("Transfer-Encoding", "chunked")],
                b"3\r\nabc\r\n0\r\nX-Injected: 1\r\nAuthorization: Bearer stolen\r\n\r\n")
    answer = edge.raw(data)
    assert answer.status in (200, 400), answer
    seen = edge.origin.seen
    assert all(s.header("x-injected") is None and s.header("authorization") is None for s in seen), seen[0].headers


OBS_TEXT = {
    "8bit-in-custom-field": request(target="/obs", headers=[b"X-Custom: caf\xe9"]),
    "utf8-user-agent": request(target="/obs", headers=[b"User-Agent: \xe2\x98\x83 browser"]),
    "utf8-host": b"GET /obs HTTP/1.1\r\nHost: sh\xc3\xb6p.example\r\n\r\n",
    "8bit-cookie": request(target="/obs", headers=[b"Cookie: a=\xff"]),
}


@pytest.mark.parametrize("data", list(OBS_TEXT.values()), ids=list(OBS_TEXT))
def test_obs_text_in_a_field_value_is_forwarded_or_refused_not_a_500(edge: Stack, data: bytes) -> None:
    edge.origin.route("/obs", Answer(headers=NO_STORE, body=b"fine"))
    answer = edge.raw(data)
    assert answer.status is not None and answer.status < 500, answer
    edge.assert_still_serving()


def test_websocket_upgrade_gets_a_clear_answer(edge: Stack) -> None:
    edge.origin.route("/ws", Answer(headers=NO_STORE, body=b"plain"))
    answer = edge.raw(request(target="/ws", headers=[("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                                     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                                     ("Sec-WebSocket-Version", "13")]))
    assert answer.status is not None and (answer.status == 200 or 400 <= answer.status < 500), answer
    edge.assert_still_serving()


# -- no open proxy ------------------------------------------------------------------------------


def test_absolute_form_targets_go_to_the_configured_origin_only(edge: Stack) -> None:
    edge.origin.route("/abs", Answer(headers=NO_STORE, body=b"ours"))
    other_authority = edge.other_authority
    targets = [
        (f"http://{other_authority}/abs", other_authority),
        (f"http://{other_authority}/abs", HOST),
        ("http://evil.example/abs", "evil.example"),
        ("http://evil.example:80/abs", HOST),
        ("https://evil.example/abs", "evil.example"),
        (f"http://user@{other_authority}/abs", other_authority),
    ]
    for target, host in targets:
        answer = edge.raw(request("GET", target, host))
        assert refused(answer) or (answer.status == 200 and answer.responses[0].body == b"ours"), (target, answer)
    assert edge.other.seen == []
    assert all(s.path == "/abs" for s in edge.origin.seen)
    edge.assert_still_serving()


# -- sizes --------------------------------------------------------------------------------------

KIB = 1024
SIZES: list[Any] = [
    pytest.param(request(target="/size", headers=[("X-Big", "a" * 16 * KIB)]), {200, 431}, id="16KiB-field-line"),
    pytest.param(request(target="/size", headers=[("X-Big", "a" * 32 * KIB)]), {431}, id="32KiB-field-line"),
    pytest.param(request(target="/size", headers=[("X-Big", "a" * 64 * KIB)]), {431}, id="64KiB-field-line"),
    pytest.param(request(target="/size", headers=[("X-Big", "a" * 1024 * KIB)]), {431}, id="1MiB-field-line"),
    pytest.param(request(target="/size", headers=[("X-" + "a" * 64 * KIB, "1")]), {431}, id="64KiB-field-name"),
    pytest.param(request(target="/size", headers=[(f"X-H{i}", "v") for i in range(99)]), {200}, id="100-field-lines"),
    pytest.param(request(target="/size", headers=[(f"X-H{i}", "v") for i in range(100)]), {431}, id="101-field-lines"),
    pytest.param(request(target="/size", headers=[(f"X-H{i}", "v") for i in range(10_000)]), {431},
                 id="10001-field-lines"),
    pytest.param(request(target="/size?" + "a" * (8 * KIB - 6)), {200}, id="8KiB-target"),
    pytest.param(request(target="/size?" + "a" * (8 * KIB - 5)), {414}, id="8KiB+1-target"),
    pytest.param(request(target="/size/" + "a" * 60 * KIB), {414}, id="60KiB-path"),
    pytest.param(request(target="/size?" + "a" * 60 * KIB), {414}, id="60KiB-query"),
    pytest.param(request(target="/size/" + "a" * 64 * KIB), {414}, id="64KiB-path"),
    pytest.param(request(target="/size?" + "a" * 1024 * KIB), {414}, id="1MiB-query"),
]


@pytest.mark.parametrize(("data", "statuses"), SIZES)
def test_oversized_requests_get_their_status_and_reach_nothing_upstream(edge: Stack, data: bytes,
                                                                        statuses: set[int]) -> None:
    edge.origin.route("/size", Answer(headers=NO_STORE, body=b"fits"))
    answer = edge.raw(data, timeout=10)
    assert answer.status in statuses, (answer.status, answer.responses[0].body[:100] if answer.responses else answer)
    if answer.status == 200:
        assert answer.responses[0].body == b"fits"
        assert len(edge.origin.seen) == 1
    else:
        assert edge.origin.seen == []
    edge.assert_still_serving()


ENDLESS = {
    "field-line": (b"GET /size HTTP/1.1\r\nHost: shop.example\r\nX-Big: ", b"a" * 64 * KIB),
    "request-target": (b"GET /size?", b"a" * 64 * KIB),
    "field-lines": (b"GET /size HTTP/1.1\r\nHost: shop.example\r\n", b"X-Many: a\r\n" * 6000),
}


@pytest.mark.parametrize(("head", "filler"), list(ENDLESS.values()), ids=list(ENDLESS))
def test_an_endless_request_head_is_refused_before_it_ends(edge: Stack, head: bytes, filler: bytes) -> None:
    answered, sent = stream_until_answered(edge.port, head, filler, limit=8 * 1024 * KIB)
    assert answered, f"no answer after {sent // KIB} KiB of request head"
    edge.assert_still_serving()


# -- slow clients -------------------------------------------------------------------------------


def _slow_clients(port: int) -> dict[str, socket.socket]:
    """Connections that each stop partway: nothing sent, a few bytes one by one, a head without its end, half a body."""
    conns = {name: socket.create_connection(("127.0.0.1", port)) for name in
             ("nothing-sent", "three-bytes-slowly", "head-without-blank-line", "half-a-body")}
    for byte in b"GET":
        conns["three-bytes-slowly"].sendall(bytes([byte]))
        time.sleep(0.2)
    conns["head-without-blank-line"].sendall(b"GET /alive HTTP/1.1\r\nHost: shop.example\r\n")
    conns["half-a-body"].sendall(b"POST /alive HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 100\r\n\r\n0123456789")
    return conns


def test_slow_clients_do_not_hold_up_other_clients(edge: Stack) -> None:
    conns = _slow_clients(edge.port)
    try:
        for _ in range(3):
            edge.assert_still_serving()
    finally:
        for conn in conns.values():
            conn.close()


def test_slow_clients_are_disconnected(edge: Stack) -> None:
    conns = _slow_clients(edge.port)
    deadline = time.monotonic() + SLOW_CLIENT_DEADLINE
    still_open = dict(conns)
    try:
        while still_open and time.monotonic() < deadline:
            for name, conn in list(still_open.items()):
                conn.settimeout(0.05)
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 408"):
                    del still_open[name]
    finally:
        for conn in conns.values():
            conn.close()
    assert not still_open, f"still open after {SLOW_CLIENT_DEADLINE} s: {sorted(still_open)}"


# -- cache poisoning: unkeyed request fields ----------------------------------------------------

UNKEYED = {  # each value carries the marker "evil"
    "x-forwarded-host": "evil.example",
    "x-original-url": "/evil",
    "x-rewrite-url": "/evil",
    "x-http-method-override": "EVIL",
    "x-forwarded-scheme": "evil",
    "x-forwarded-proto": "evil",
    "x-host": "evil.example",
    "forwarded": "host=evil.example;proto=evil",
}


def _echo_unkeyed(headers: dict[str, str]) -> Answer:
    """A vulnerable origin: it builds its page from fields the cache key does not include."""
    return Answer(headers=FRESH, body=json.dumps({name: headers.get(name) for name in UNKEYED}).encode())


@pytest.mark.parametrize("name", [
    name
    for name in UNKEYED
])
def test_unkeyed_request_fields_cannot_poison_what_a_plain_request_gets(edge: Stack, name: str) -> None:
    path = f"/poison/{name}"
    edge.origin.route(path, _echo_unkeyed)
    attack = edge.get(path, headers=[(name, UNKEYED[name])])
    assert attack.status == 200
    plain = edge.get(path)
    assert plain.status == 200
    assert b"evil" not in plain.responses[0].body.lower(), plain.responses[0].body


def test_connection_listed_fields_cannot_poison_a_vary_variant(edge: Stack) -> None:
    edge.origin.route("/lang", lambda h: Answer(headers=FRESH + [("Vary", "Accept-Language")],
                                                body=h.get("accept-language", "default").encode()))
    edge.get("/lang", headers=[("Accept-Language", "fr"), ("Connection", "accept-language")])
    victim = edge.get("/lang", headers=[("Accept-Language", "fr")])
    assert victim.responses[0].body == b"fr"


def test_set_cookie_responses_are_not_shared(edge: Stack) -> None:
    variants = {
        "/cookie/plain": FRESH,
        "/cookie/public": [("Cache-Control", "public, max-age=3600")],
        "/cookie/s-maxage": [("Cache-Control", "s-maxage=3600")],
        "/cookie/cdn-cache-control": [("CDN-Cache-Control", "max-age=3600")],
        "/cookie/surrogate-control": [("Surrogate-Control", "max-age=3600")],
    }
    for path, headers in variants.items():
        edge.origin.route(path, Answer(headers=headers + [("Set-Cookie", "session=first-client")], body=b"page"))
        edge.get(path)
        second = edge.get(path)
        assert [s.path for s in edge.origin.seen].count(path) == 2, path
        assert "hit" not in second.responses[0].headers.get("cache-status", ""), path


def test_a_304_with_set_cookie_does_not_put_a_cookie_in_the_stored_response(edge: Stack) -> None:
    def answer(headers: dict[str, str]) -> Answer:
        if headers.get("if-none-match") == '"v1"':
            return Answer(304, [("ETag", '"v1"'), ("Cache-Control", "max-age=3600"),
                                ("Set-Cookie", "session=revalidating-client")], b"")
        return Answer(headers=[("ETag", '"v1"'), ("Cache-Control", "max-age=0")], body=b"page")

    edge.origin.route("/cookie/revalidated", answer)
    edge.get("/cookie/revalidated")
    edge.get("/cookie/revalidated")  # stale: revalidated, the 304 sets a cookie for this client
    later = edge.get("/cookie/revalidated")
    assert "set-cookie" not in later.responses[0].headers, later.responses[0].headers


# -- cache poisoning: path and host spellings ---------------------------------------------------

PATH_SPELLINGS = ["/b", "/B", "//b", "/b/", "/b?", "/b#fragment",
                  # RFC 3986 §6.2.2: dot segments and percent-encoded unreserved octets name the same /b
                  "/a/../b", "/a/./b", "/./b", "/../b", "/a/b/../../b", "/%62", "/a/%2e%2e/b", "/a/%2E%2E/%62"]


@pytest.mark.parametrize("spelling", PATH_SPELLINGS)
def test_a_path_spelling_is_cached_under_the_path_the_origin_served(edge: Stack, spelling: str) -> None:
    # Each spelling under its own prefix, so cases do not share entries.
    prefix = f"/spelling-{next(_unique)}"
    target = prefix + spelling if not spelling.startswith("/../") else "/.." + prefix + spelling[3:]
    version = {"n": 1}
    edge.origin.fallback = lambda path, headers: Answer(headers=FRESH, body=f"{path} v{version['n']}".encode())
    try:
        first = edge.get(target)
        if refused(first):  # a spelling the edge refuses outright is fine too
            assert edge.origin.seen == []
            return
        assert len(edge.origin.seen) == 1
        served = edge.origin.seen[0].path  # the path the origin routed this request on
        assert first.responses[0].body == f"{served} v1".encode()  # the client got what the origin served
        version["n"] = 2
        edge.admin_purge({"kind": "url", "values": [f"http://{HOST}{served}"]})
        again = edge.get(target)
        assert again.responses[0].body == f"{served} v2".encode(), (
            f"{target!r} still served the purged copy of {served!r}: {again.responses[0].body!r}")
    finally:
        edge.origin.fallback = None


def test_host_spellings_are_keyed_consistently_with_what_the_origin_is_told(edge: Stack) -> None:
    # The origin names the host it was told (X-Forwarded-Host): every answer must be for the client's own host.
    edge.origin.route("/host", lambda h: Answer(headers=FRESH, body=(h.get("x-forwarded-host") or "").encode()))
    spellings = ["shop.example", "SHOP.example", "Shop.Example", "shop.example.", "SHOP.EXAMPLE.",
                 "shop.example:80", "SHOP.example:80", "shop.example:8080"]
    for host in spellings:
        answer = edge.get("/host", host=host)
        assert answer.status == 200
        assert answer.responses[0].body == host.lower().encode(), (host, answer.responses[0].body)
    assert len(edge.origin.seen) == len({h.lower() for h in spellings})  # case never makes a second entry


def test_host_spellings_with_allowed_hosts_are_served_as_that_host_or_refused() -> None:
    origin = ScriptedOrigin()
    origin.route("/host", lambda h: Answer(headers=FRESH, body=(h.get("x-forwarded-host") or "").encode()))
    with ThreadServer(origin) as origin_server:
        app = create_edge(EdgeSettings(origin=origin_server.url, allowed_hosts=[HOST], shield={"rules": []},
                                       access_log=False))
        with ThreadServer(app, proxy=True) as server:
            for host in ["shop.example", "SHOP.example", "shop.example.", "shop.example:80", "evil.example",
                         "evil.example:80", "shop.example@evil.example", "evil.example#shop.example"]:
                answer = exchange(server.port, request(target="/host", host=host))
                told = answer.responses[0].body.split(b":")[0].rstrip(b".") if answer.status == 200 else b""
                assert told == HOST.encode() or answer.status == 400, (host, answer)
                if host.lower().split(":")[0].rstrip(".") != HOST:
                    assert answer.status == 400, host


# -- the purge API and the edge's admin endpoints -----------------------------------------------

TOKEN = "purge-secret"
READER = "read-only"
TAGGED = {"/p1": "products product-1", "/p2": "products product-2", "/star": "prod*", "/question": "product-?",
          "/lists": "product-lists"}


@dataclass
class Fleet:
    origin: ScriptedOrigin
    log: MemoryPurgeLog
    edge: Edge
    edge_url: str
    api_url: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.edge_url, headers={"Host": HOST}, timeout=10)

    def fill(self) -> None:
        for path in TAGGED:
            self.client.get(path)
        assert all(self.cached(path) for path in TAGGED)

    def cached(self, path: str) -> bool:
        return self.client.get(path).headers.get("cache-status", "").startswith("edge-p; hit")

    def log_length(self) -> int:
        return asyncio.run(self.log.tail())[1]

    def api(self, method: str = "POST", path: str = "/purges", **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.api_url + path, timeout=10, **kwargs)


@pytest.fixture(scope="module")
def fleet_servers() -> Iterator[Fleet]:
    origin = ScriptedOrigin()
    for path, tags in TAGGED.items():
        origin.route(path, Answer(headers=FRESH + [("Surrogate-Key", tags)], body=path.encode()))
    log = MemoryPurgeLog()
    with ThreadServer(origin) as origin_server:
        edge = create_edge(EdgeSettings(origin=origin_server.url, id="edge-p", admin_token=ADMIN,
                                        shield={"rules": []}, access_log=False), purge_log=log)
        api = create_purge_api(PurgeApiSettings(token=TOKEN, read_tokens=[READER]), purge_log=log)
        with ThreadServer(edge, proxy=True) as edge_server, ThreadServer(api) as api_server:
            fleet = Fleet(origin, log, edge, edge_server.url, api_server.url)
            yield fleet
            fleet.client.close()


@pytest.fixture
def fleet(fleet_servers: Fleet) -> Fleet:
    fleet_servers.fill()
    return fleet_servers


def assert_untouched(fleet: Fleet, logged_before: int, stored_before: int) -> None:
    """Nothing was logged, and the edge kept every entry."""
    time.sleep(0.05)  # past one poll of the edge's purge listener
    assert fleet.log_length() == logged_before
    assert len(fleet.edge.store) == stored_before
    assert all(fleet.cached(path) for path in TAGGED)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BEARER = {"Authorization": f"Bearer {TOKEN}"}
PURGE_ALL = {"json": {"kind": "all"}}
BAD_API_CALLS: dict[str, tuple[dict[str, Any], int]] = {
    "no-token": ({**PURGE_ALL}, 401),
    "wrong-token": ({"headers": {"Authorization": "Bearer nope"}, **PURGE_ALL}, 403),
    "token-prefix": ({"headers": {"Authorization": f"Bearer {TOKEN[:-1]}"}, **PURGE_ALL}, 403),
    "token-with-suffix": ({"headers": {"Authorization": f"Bearer {TOKEN}x"}, **PURGE_ALL}, 403),
    "token-in-query": ({"params": {"token": TOKEN, "access_token": TOKEN}, **PURGE_ALL}, 401),
    "token-in-cookie": ({"headers": {"Cookie": f"token={TOKEN}; access_token={TOKEN}"}, **PURGE_ALL}, 401),
    "token-as-basic": ({"headers": {"Authorization": "Basic " + base64.b64encode(f"x:{TOKEN}".encode()).decode()},
                        **PURGE_ALL}, 401),
    "token-as-raw-basic": ({"headers": {"Authorization": f"Basic {TOKEN}"}, **PURGE_ALL}, 401),
    "token-without-scheme": ({"headers": {"Authorization": TOKEN}, **PURGE_ALL}, 401),
    "token-in-x-api-key": ({"headers": {"X-Api-Key": TOKEN}, **PURGE_ALL}, 401),
    "token-in-proxy-authorization": ({"headers": {"Proxy-Authorization": f"Bearer {TOKEN}"}, **PURGE_ALL}, 401),
    "read-only-token": ({"headers": {"Authorization": f"Bearer {READER}"}, **PURGE_ALL}, 403),
    "oversized-body": ({"headers": BEARER, "content": b'{"kind":"tag","values":["' + b"a" * 70_000 + b'"]}'}, 413),
    "oversized-chunked-body": ({"headers": BEARER, "content": iter([b'{"kind":"all","x":"', b"a" * 70_000, b'"}'])},
                               413),
    "deeply-nested-array": ({"headers": BEARER, "content": _nested(30_000)}, 400),
    "deeply-nested-object": ({"headers": BEARER, "content": b'{"a":' * 10_000 + b"1" + b"}" * 10_000}, 400),
    "nested-values": ({"headers": BEARER, "json": {"kind": "tag", "values": [[[["product-1"]]]]}}, 422),
    "not-json": ({"headers": BEARER, "content": b"kind=all"}, 400),
    "not-utf8": ({"headers": BEARER, "content": b'{"kind":"tag","values":["\xff"]}'}, 400),
    "257-tags": ({"headers": BEARER, "json": {"kind": "tag", "values": [f"t{i}" for i in range(257)]}}, 422),
    "5000-tags": ({"headers": BEARER, "json": {"kind": "tag", "values": [f"t{i}" for i in range(5000)]}}, 422),
    "tag-with-nul": ({"headers": BEARER, "json": {"kind": "tag", "values": ["product-1\x00"]}}, 422),
    "tag-with-escape": ({"headers": BEARER, "json": {"kind": "tag", "values": ["\x1b[31mproduct-1"]}}, 422),
    "tag-with-newline": ({"headers": BEARER, "json": {"kind": "tag", "values": ["product-1\nproducts"]}}, 422),
    "tag-with-del": ({"headers": BEARER, "json": {"kind": "tag", "values": ["product-1\x7f"]}}, 422),
    "tag-with-line-separator": ({"headers": BEARER, "json": {"kind": "tag", "values": ["product-1\u2028"]}}, 422),
    "tag-with-zero-width-space": ({"headers": BEARER, "json": {"kind": "tag", "values": ["product\u200b-1"]}}, 422),
    "tag-with-space": ({"headers": BEARER, "json": {"kind": "tag", "values": ["product-1 products"]}}, 422),
    "empty-tag": ({"headers": BEARER, "json": {"kind": "tag", "values": [""]}}, 422),
    "glob-kind": ({"headers": BEARER, "json": {"kind": "*"}}, 422),
    "relative-url": ({"headers": BEARER, "json": {"kind": "url", "values": ["/p1"]}}, 422),
    "soft-as-string": ({"headers": BEARER, "json": {"kind": "all", "soft": "true"}}, 422),
    "negative-version": ({"headers": BEARER, "json": {"kind": "all", "version": -1}}, 422),
    "unknown-event": ({"headers": BEARER, "json": {"kind": "event", "event": "__class__"}}, 422),
    "nested-event-fields": ({"headers": BEARER, "content": b'{"kind":"event","event":"product.updated","fields":{"id":'
                             + _nested(500) + b"}}"}, 422),
    "idempotency-key-too-long": ({"headers": {**BEARER, "Idempotency-Key": "k" * 300}, **PURGE_ALL}, 400),
    "idempotency-key-with-control": ({"headers": {**BEARER, "Idempotency-Key": "k\x01"}, **PURGE_ALL}, 400),
}


@pytest.mark.parametrize(("call", "status"), list(BAD_API_CALLS.values()), ids=list(BAD_API_CALLS))
def test_bad_purge_api_calls_get_a_clear_4xx_and_purge_nothing(fleet: Fleet, call: dict[str, Any],
                                                               status: int) -> None:
    logged, stored = fleet.log_length(), len(fleet.edge.store)
    response = fleet.api(**call)
    assert response.status_code == status, response.text
    assert_untouched(fleet, logged, stored)


def test_purge_api_reads_need_a_token_too(fleet: Fleet) -> None:
    assert fleet.api("GET", "/purges/p-anything").status_code == 401
    assert fleet.api("GET", "/edges", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert fleet.api("GET", "/edges", params={"token": TOKEN}).status_code == 401
    assert fleet.api("GET", "/purges").status_code == 401  # the recent purges, for the status page
    assert fleet.api("GET", "/purges", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert fleet.api("DELETE", "/purges", headers=BEARER).status_code == 405


ADMIN_BEARER = {"Authorization": f"Bearer {ADMIN}"}
BAD_ADMIN_CALLS: dict[str, tuple[dict[str, Any], int]] = {
    "no-token": ({**PURGE_ALL}, 401),
    "wrong-token": ({"headers": {"Authorization": "Bearer nope"}, **PURGE_ALL}, 403),
    "token-in-query": ({"params": {"token": ADMIN}, **PURGE_ALL}, 401),
    "token-in-cookie": ({"headers": {"Cookie": f"token={ADMIN}"}, **PURGE_ALL}, 401),
    "token-as-basic": ({"headers": {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN}".encode()).decode()},
                        **PURGE_ALL}, 401),
    "token-without-scheme": ({"headers": {"Authorization": ADMIN}, **PURGE_ALL}, 401),
    "purge-api-token": ({"headers": BEARER, **PURGE_ALL}, 403),
    "unauthenticated-huge-body": ({"content": b"x" * 4 * 1024 * KIB}, 401),
    "oversized-body": ({"headers": ADMIN_BEARER, "content": b'{"kind":"all","x":"' + b"a" * 70_000 + b'"}'}, 413),
    "deeply-nested": ({"headers": ADMIN_BEARER, "content": _nested(30_000)}, 400),
    "not-json": ({"headers": ADMIN_BEARER, "content": b"kind=all"}, 400),
    "not-an-object": ({"headers": ADMIN_BEARER, "json": ["all"]}, 400),
    "257-tags": ({"headers": ADMIN_BEARER, "json": {"kind": "tag", "values": [f"t{i}" for i in range(257)]}}, 422),
    "5000-tags": ({"headers": ADMIN_BEARER, "json": {"kind": "tag", "values": [f"t{i}" for i in range(5000)]}}, 422),
    "tag-with-nul": ({"headers": ADMIN_BEARER, "json": {"kind": "tag", "values": ["product-1\x00"]}}, 422),
    "tag-with-escape": ({"headers": ADMIN_BEARER, "json": {"kind": "tag", "values": ["\x1b[31mproducts"]}}, 422),
    "values-not-a-list": ({"headers": ADMIN_BEARER, "json": {"kind": "tag", "values": {"products": 1}}}, 422),
    "kind-as-list": ({"headers": ADMIN_BEARER, "json": {"kind": ["tag"], "values": ["products"]}}, 422),
    "glob-kind": ({"headers": ADMIN_BEARER, "json": {"kind": "*"}}, 422),
    "soft-as-string": ({"headers": ADMIN_BEARER, "json": {"kind": "all", "soft": "yes"}}, 422),
}


@pytest.mark.parametrize(("call", "status"), list(BAD_ADMIN_CALLS.values()), ids=list(BAD_ADMIN_CALLS))
def test_bad_admin_calls_get_a_clear_4xx_and_purge_nothing(fleet: Fleet, call: dict[str, Any], status: int) -> None:
    logged, stored = fleet.log_length(), len(fleet.edge.store)
    response = fleet.client.post("/_edge/purge", **call)
    assert response.status_code == status, response.text
    assert_untouched(fleet, logged, stored)


def test_admin_endpoints_are_closed_without_a_configured_token() -> None:
    app = create_edge(EdgeSettings(origin="http://127.0.0.1:9", access_log=False))
    with ThreadServer(app, proxy=True) as server:
        for path in ("/_edge/stats", "/_edge/shield", "/_edge/pool"):
            assert httpx.get(server.url + path, headers={"Authorization": "Bearer None"}).status_code == 403
        assert httpx.post(server.url + "/_edge/purge", json={"kind": "all"},
                          headers={"Authorization": "Bearer None"}).status_code == 403


GLOBS = ["prod*", "product-?", "product-[12]", "*", "products*", "product-*"]


@pytest.mark.parametrize("through", ["purge-api", "admin"])
def test_glob_characters_in_tags_are_literal(fleet: Fleet, through: str) -> None:
    for tag in GLOBS:
        fleet.fill()
        if through == "admin":
            response = fleet.client.post("/_edge/purge", json={"kind": "tag", "values": [tag]}, headers=ADMIN_BEARER)
        else:
            response = fleet.api(json={"kind": "tag", "values": [tag]}, headers=BEARER, params={"wait": 5})
        assert response.status_code == 200, response.text
        time.sleep(0.1)  # the sweeper deletes tag-purged entries between requests
        gone = sorted(path for path in TAGGED if not fleet.cached(path))
        literal = sorted(path for path, tags in TAGGED.items() if tag in tags.split())
        assert gone == literal, (tag, gone)


@pytest.mark.parametrize("through", ["purge-api", "admin"])
def test_glob_characters_in_prefixes_are_literal(fleet: Fleet, through: str) -> None:
    payload = {"kind": "prefix", "values": [f"http://{HOST}/p*", f"http://{HOST}/*"]}
    if through == "admin":
        response = fleet.client.post("/_edge/purge", json=payload, headers=ADMIN_BEARER)
    else:
        response = fleet.api(json=payload, headers=BEARER, params={"wait": 5})
    assert response.status_code == 200, response.text
    assert all(fleet.cached(path) for path in TAGGED)


def test_a_replayed_idempotency_key_purges_once(fleet: Fleet) -> None:
    key = {**BEARER, "Idempotency-Key": f"replay-{time.monotonic_ns()}"}
    first = fleet.api(json={"kind": "tag", "values": ["product-1"]}, headers=key, params={"wait": 5})
    assert first.status_code == 200 and first.json()["replayed"] is False
    fleet.fill()  # /p1 is stored again: a replay must not purge it a second time
    logged = fleet.log_length()
    again = fleet.api(json={"kind": "tag", "values": ["product-1"]}, headers=key)
    assert again.status_code == 202 and again.json()["replayed"] is True
    assert again.json()["id"] == first.json()["id"]
    assert_untouched(fleet, logged, len(fleet.edge.store))


def test_an_idempotency_key_reused_for_another_purge_is_refused(fleet: Fleet) -> None:
    key = {**BEARER, "Idempotency-Key": f"reuse-{time.monotonic_ns()}"}
    first = fleet.api(json={"kind": "tag", "values": ["product-lists"]}, headers=key, params={"wait": 5})
    assert first.status_code == 200
    fleet.fill()
    logged = fleet.log_length()
    other = fleet.api(json={"kind": "all"}, headers=key)
    assert other.status_code == 422, other.text
    assert_untouched(fleet, logged, len(fleet.edge.store))


# -- the shield ---------------------------------------------------------------------------------


@contextlib.contextmanager
def shielded_edge() -> Iterator[tuple[ScriptedOrigin, str]]:
    """A fresh in-process edge with a small origin-bound limit (5/s, burst 5) per client."""
    origin = ScriptedOrigin()
    origin.route("/p", Answer(headers=FRESH, body=b"p"))
    origin.route("/products", Answer(headers=FRESH, body=b"products"))
    with ThreadServer(origin) as origin_server:
        app = create_edge(EdgeSettings(origin=origin_server.url, id="edge-s", shield=SHIELD_RULE, access_log=False))
        with ThreadServer(app, proxy=True) as server:
            yield origin, server.url


Rotation = Callable[[int], tuple[str, dict[str, str]]]  # request number -> (target, fields)


def flood(url: str, requests: Rotation, n: int = 40, local_address: str | None = None) -> tuple[int, int, float]:
    """Send `n` requests as fast as one client can; (answered 200, refused with 429, seconds taken)."""
    transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
    statuses = []
    started = time.monotonic()
    with httpx.Client(base_url=url, transport=transport, timeout=10) as client:
        for i in range(n):
            path, headers = requests(i)
            statuses.append(client.get(path, headers=headers).status_code)
    return statuses.count(200), statuses.count(429), time.monotonic() - started


def admitted_at_most(elapsed: float) -> int:
    """GCRA with rate 5 and burst 5: at most burst + rate × elapsed requests in `elapsed` seconds (+1 for edges)."""
    return 5 + int(5 * elapsed) + 1


def _rotating_case(i: int) -> str:
    rng = random.Random(i)
    return "/" + "".join(c.upper() if rng.random() < 0.5 else c for c in "products") + f"?n={i}"


ROTATIONS: dict[str, Rotation] = {
    "query-string": lambda i: (f"/p?cachebuster={i}", {}),
    "path-case": lambda i: (_rotating_case(i), {}),
    "request-fields": lambda i: (f"/p?i={i}", {"User-Agent": f"bot-{i}", "Accept-Language": f"x-{i}",
                                               "Cookie": f"id={i}", "X-Request-Id": str(i)}),
    "x-real-ip": lambda i: (f"/p?i={i}", {"X-Real-IP": f"10.0.{i // 250}.{i % 250}"}),
    "forwarded-for": lambda i: (f"/p?i={i}", {"Forwarded": f"for=10.0.{i // 250}.{i % 250}"}),
    "true-client-ip": lambda i: (f"/p?i={i}", {"True-Client-IP": f"10.0.{i // 250}.{i % 250}",
                                               "CF-Connecting-IP": f"10.1.{i // 250}.{i % 250}"}),
}


@pytest.mark.parametrize("rotation", list(ROTATIONS.values()), ids=list(ROTATIONS))
def test_origin_bound_limit_holds_for_a_client_that_rotates(rotation: Rotation) -> None:
    with shielded_edge() as (origin, url):
        _, refused_count, elapsed = flood(url, rotation)
        upstream = sum(origin.hits.values())
    assert upstream <= admitted_at_most(elapsed), (upstream, elapsed)
    assert refused_count >= 40 - admitted_at_most(elapsed)


def test_a_path_rule_holds_for_a_client_that_rotates_path_spellings() -> None:
    # A rule on every request (scope "all") to /api/: dot segments, percent-encoding and doubled dots
    # must not spell a path the rule does not see. Raw requests: an HTTP client would clean them up.
    origin = ScriptedOrigin()
    origin.route("/api/p", Answer(headers=FRESH, body=b"p"))
    rule = {"rules": [{"name": "api", "key": ["ip"], "scope": "all", "paths": ["/api/"], "rate": 5, "burst": 5}]}
    spellings = ["/x/../api/p", "/./api/p", "/%61pi/p", "/x/%2e%2e/api/p", "/api/./p", "/x/y/../../api/p"]
    with ThreadServer(origin) as origin_server:
        app = create_edge(EdgeSettings(origin=origin_server.url, id="edge-s", shield=rule, access_log=False))
        with ThreadServer(app, proxy=True) as server:
            port = int(server.url.rsplit(":", 1)[1])
            started = time.monotonic()
            # One object: after the first, every spelling is a hit that only the rule at receive time can stop.
            statuses = [exchange(port, request(target=spellings[i % len(spellings)])).status for i in range(40)]
            elapsed = time.monotonic() - started
    assert statuses.count(200) <= admitted_at_most(elapsed), (statuses, elapsed)
    assert statuses.count(429) >= 40 - admitted_at_most(elapsed), statuses


def _rotating_xff(i: int) -> tuple[str, dict[str, str]]:
    return f"/p?i={i}", {"X-Forwarded-For": f"10.0.{i // 250}.{i % 250}"}


def test_rotating_x_forwarded_for_buys_an_untrusted_peer_nothing() -> None:
    # From 127.0.0.2: a peer that neither the shield (no trusted_proxies) nor uvicorn trusts.
    with shielded_edge() as (origin, url):
        _, _, elapsed = flood(url, _rotating_xff, local_address="127.0.0.2")
        assert sum(origin.hits.values()) <= admitted_at_most(elapsed)


def test_rotating_x_forwarded_for_buys_a_loopback_peer_nothing_in_production() -> None:
    origin = ScriptedOrigin()
    origin.route("/p", Answer(headers=FRESH, body=b"p"))
    with ThreadServer(origin) as origin_server:
        with cdn_process(*edge_args(origin_server.url, "--shield", json.dumps(SHIELD_RULE))) as url:
            _, _, elapsed = flood(url, _rotating_xff)
            assert sum(origin.hits.values()) <= admitted_at_most(elapsed), (sum(origin.hits.values()), elapsed)


# -- arbitrary fields from the origin through a real edge ---------------------------------------

FIELD_TOKENS = ["max-age=", "s-maxage=", "no-cache", "no-store", "private", "public", "must-revalidate",
                "stale-while-revalidate=", "stale-if-error=", "immutable", "bytes=", "*", "W/", '"', ",", ";", "=",
                " ", "-", "0", "1", "60", "-1", "99999999999999999999999", "1e3", "0x10",
                "Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "GMT", "Accept-Encoding",
                "Cookie", "\t", "a", "é", "\x80", "ÿ"]
FIELD_VALUE = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40),
    st.lists(st.sampled_from(FIELD_TOKENS), max_size=10).map("".join),
)
ORIGIN_FIELDS = ["cache-control", "cdn-cache-control", "surrogate-control", "vary", "age", "expires", "date",
                 "last-modified", "etag", "range", "content-range", "accept-ranges", "surrogate-key", "cache-tag",
                 "if-none-match", "x-content-version", "pragma"]
REQUEST_FIELDS = ["cache-control", "pragma", "range", "if-none-match", "if-modified-since", "if-range",
                  "accept-language", "accept-encoding", "surrogate-capability", "cdn-loop"]
ASCII_VALUE = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.lists(st.sampled_from([t for t in FIELD_TOKENS if t.isascii()]), max_size=10).map("".join),
)


def answered_without_crashing(answer: Exchange) -> None:
    assert answer.error is None, answer.error
    assert answer.status is not None and answer.status < 600, answer
    # An unhandled exception is uvicorn's bare 500; every answer of the edge's own names the edge.
    assert not (answer.status == 500 and "x-served-by" not in answer.responses[0].headers), answer.responses[0]


# Validators are sent back to the origin; their obs-text case has its own test below.
ORIGIN_FIELD = st.sampled_from(ORIGIN_FIELDS).flatmap(
    lambda name: st.tuples(st.just(name), ASCII_VALUE if name in ("etag", "last-modified") else FIELD_VALUE))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=st.sampled_from([200, 203, 206, 301, 404, 410, 500]),
       fields=st.lists(ORIGIN_FIELD, min_size=1, max_size=6))
def test_arbitrary_origin_fields_never_crash_the_edge(stack: Stack, status: int, fields: list[tuple[str, str]]) -> None:
    path = f"/arbitrary/{next(_unique)}"
    stack.origin.route(path, Answer(status, fields, b"0123456789"))
    for extra in ([], [("If-None-Match", '"x"'), ("Range", "bytes=2-4")], [("Cache-Control", "max-stale=60")]):
        answered_without_crashing(stack.get(path, headers=extra))
    answered_without_crashing(stack.raw(request("HEAD", path, HOST), methods=["HEAD"]))
    stack.assert_still_serving()


STORED_WITH_VALIDATORS = FRESH + [("ETag", '"e1"'), ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
                                  ("Vary", "Accept-Language, Accept-Encoding")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.lists(st.tuples(st.sampled_from(REQUEST_FIELDS), ASCII_VALUE), min_size=1, max_size=5))
def test_arbitrary_request_fields_on_a_stored_response_never_crash_the_edge(stack: Stack,
                                                                           fields: list[tuple[str, str]]) -> None:
    stack.origin.route("/stored", Answer(headers=STORED_WITH_VALIDATORS, body=b"0123456789"))
    stack.get("/stored")
    answered_without_crashing(stack.get("/stored", headers=[(n, v.strip(" \t")) for n, v in fields]))
    stack.assert_still_serving()


@pytest.mark.parametrize("validator", ["ETag", "Last-Modified"])
def test_a_stored_validator_with_obs_text_does_not_break_the_url(edge: Stack, validator: str) -> None:
    path = f"/validator/{validator}"
    edge.origin.route(path, Answer(headers=[(validator, "\u00e9t\u00e9")], body=b"summer"))  # stale at once
    assert edge.get(path).status == 200
    for _ in range(2):
        answered_without_crashing(edge.get(path))


# -- log output -----------------------------------------------------------------------------------


@contextlib.contextmanager
def edge_with_unread_output(*args: str) -> Iterator[int]:
    """`python -m cdn edge ...` with stdout and stderr a pipe nobody reads (as cdn_process runs it); its port.

    Killed at the end rather than terminated: an edge blocked writing to the pipe never handles SIGTERM."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cdn", "edge", *args, "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        yield port
    finally:
        process.kill()
        process.wait()


def test_the_edge_keeps_serving_when_its_access_log_is_not_read() -> None:
    # Once, each access log line was written to stdout from the event loop: with stdout a pipe nobody
    # drains, the edge stopped answering after about 64 KiB of log lines (~270 requests).
    origin = ScriptedOrigin()
    origin.route("/logged", Answer(headers=FRESH, body=b"logged"))
    with ThreadServer(origin) as origin_server, edge_with_unread_output("--origin", origin_server.url) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
            for i in range(500):
                try:
                    assert client.get("/logged").status_code == 200
                except httpx.TimeoutException:
                    pytest.fail(f"no answer to request {i}")


def test_the_edge_keeps_serving_when_its_warnings_are_not_read() -> None:
    with edge_with_unread_output("--origin", f"http://127.0.0.1:{free_port()}", "--no-access-log") as port:
        for i in range(40):
            answer = exchange(port, request(target="/origin-down?" + "a" * 7 * KIB), timeout=2)
            assert answer.status == 502, f"no answer to request {i}"


def test_the_edge_keeps_serving_when_its_warnings_about_malformed_requests_are_not_read() -> None:
    # Each malformed request logs "Invalid HTTP request received.": once, ~1,600 of them filled the pipe.
    with edge_with_unread_output("--origin", f"http://127.0.0.1:{free_port()}", "--no-access-log") as port:
        for i in range(2500):
            answer = exchange(port, b"G(T /bad HTTP/1.1\r\nHost: shop.example\r\n\r\n", timeout=2)
            assert answer.status == 400, f"no answer to request {i}"
