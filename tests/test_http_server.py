"""The HTTP server under every service (`cdn.http_server`): client deadlines, head limits, strict versions,
trailers and upgrades, on a real uvicorn over loopback; and logging that never blocks its caller."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from cdn.http_server import (
    CHECKED_FIELDS,
    BodyFile,
    JOIN_BODY_BELOW,
    MAX_HEAD_BYTES,
    ClientLimits,
    CoalescingTransport,
    QueuedStreamHandler,
    ResponseCycle,
    dropped_log_records,
    fields_checked,
    protocol_class,
    queued_log_config,
)
from tests.raw_http import exchange, request, stream_until_answered
from tests.servers import free_port

SHORT = 0.3  # seconds: the client deadlines of the server under test
WAIT = 10.0  # generous bound on any wait for the server


class Recorder:
    """An app that reads the whole body, then answers 200 with `ok` + the body, after `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[tuple[dict[str, Any], bytes, list[str]]] = []  # scope, body, receive message types

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(self.delay)
        body, kinds = b"", []
        while True:
            message = await receive()
            kinds.append(message["type"])
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.seen.append((scope, body, kinds))
        if kinds[-1] == "http.disconnect":
            return
        answer = b"ok" + body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


@contextlib.contextmanager
def serving(app: Any, header_timeout: float = SHORT, body_timeout: float = SHORT, **options: Any) -> Iterator[int]:
    """`app` on uvicorn with `HttpProtocol` in a background thread (other uvicorn `options` as given); its port."""
    port = free_port()
    options = {"log_level": "critical", "lifespan": "off", "access_log": False, **options}
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws="none",
                            http=protocol_class(ClientLimits(header_timeout, body_timeout)), **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (at most WAIT seconds)."""
    sock.settimeout(WAIT)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_client_that_sends_nothing_is_closed_quietly() -> None:
    with serving(Recorder()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        assert read_until_closed(sock) == b""  # nothing of a request came: nothing to answer


def test_half_a_head_gets_408_and_the_connection_closed() -> None:
    app = Recorder()
    with serving(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    assert app.seen == []


def test_a_head_sent_a_byte_at_a_time_still_has_one_deadline() -> None:
    with serving(Recorder()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        deadline = time.monotonic() + WAIT
        with contextlib.suppress(OSError):
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\n" * 100:
                sock.sendall(bytes([byte]))
                time.sleep(SHORT / 10)
                assert time.monotonic() < deadline, "still reading the head"
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_stalled_body_gets_408_and_the_app_a_disconnect() -> None:
    app = Recorder()
    with serving(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    deadline = time.monotonic() + WAIT
    while not app.seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.seen[0][2][-1] == "http.disconnect"


def test_a_body_that_keeps_coming_is_not_cut_off() -> None:
    app = Recorder()
    with serving(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for byte in b"01234567":  # 8 pauses, each shorter than the body timeout: longer than it in all
            time.sleep(SHORT / 2)
            sock.sendall(bytes([byte]))
        sock.settimeout(WAIT)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert app.seen[0][1] == b"01234567"


def test_an_idle_keep_alive_connection_is_left_to_the_keep_alive_timeout() -> None:
    with serving(Recorder()) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(WAIT)
        sock.sendall(request(target="/first", host="x"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        time.sleep(SHORT * 3)  # idle between requests: not a slow request head
        sock.sendall(request(target="/second", host="x"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_a_slow_answer_is_not_the_clients_delay() -> None:
    with serving(Recorder(delay=SHORT * 3)) as port:
        # The pipelined second request's head stops halfway while the first is still being answered.
        answer = exchange(port, request(target="/first", host="x") + b"GET /second HTTP/1.1\r\n", timeout=WAIT)
        assert answer.status == 200


def test_a_body_the_app_has_not_asked_for_yet_is_not_timed_out() -> None:
    # With Expect: 100-continue the client waits for the app to ask for the body: that wait is not its pause.
    app = Recorder(delay=SHORT * 3)
    with serving(app) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(WAIT)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"abc")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert app.seen[0][1] == b"abc"


@pytest.mark.parametrize("target", ["/" + "a" * 65535, "/?" + "a" * 1024 * 1024])
def test_a_target_too_long_to_parse_gets_414(target: str) -> None:
    app = Recorder()
    with serving(app) as port:
        assert exchange(port, request(target=target, host="x"), timeout=WAIT).status == 414
    assert app.seen == []


def test_the_longest_parsable_target_is_passed_on() -> None:
    with serving(Recorder()) as port:
        assert exchange(port, request(target="/" + "a" * 65534, host="x"), timeout=WAIT).status == 200


@pytest.mark.parametrize(("head", "filler"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 4096),
    (b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-Many: a\r\n" * 400),
    (b"GET /?", b"a" * 4096),
    # an endless trailer section, which the parser would buffer like a head
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: ", b"a" * 4096),
], ids=["field-line", "field-lines", "target", "trailer"])
def test_an_endless_head_is_refused_soon_after_the_limit(head: bytes, filler: bytes) -> None:
    with serving(Recorder(), header_timeout=WAIT, body_timeout=WAIT) as port:
        answered, sent = stream_until_answered(port, head, filler, limit=16 * MAX_HEAD_BYTES, timeout=WAIT)
        assert answered, f"no answer after {sent} bytes"


@pytest.mark.parametrize("line", [b"GET /", b"GET / HTTP/2.0", b"GET / HTTP/0.9"])
def test_request_lines_that_are_not_http_1_get_400(line: str) -> None:
    app = Recorder()
    with serving(app) as port:
        assert exchange(port, line + b"\r\nHost: x\r\n\r\n", timeout=WAIT).status == 400
    assert app.seen == []


def test_http_1_0_is_served() -> None:
    with serving(Recorder()) as port:
        answer = exchange(port, request(target="/", host="x", version="HTTP/1.0"), timeout=WAIT)
        assert answer.status == 200


def test_trailer_fields_are_dropped_and_the_body_kept() -> None:
    app = Recorder()
    with serving(app) as port:
        data = request("POST", "/", "x", [("Transfer-Encoding", "chunked")],
                       b"3\r\nabc\r\n0\r\nX-Injected: 1\r\nAuthorization: Bearer stolen\r\n\r\n")
        assert exchange(port, data, timeout=WAIT).status == 200
    scope, body, _ = app.seen[0]
    assert body == b"abc"
    assert [name for name, _ in scope["headers"]] == [b"host", b"transfer-encoding"]


def test_an_upgrade_is_answered_as_plain_http_and_the_connection_closed() -> None:
    app = Recorder()
    upgrade = request(target="/ws", host="x", headers=[("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                                       ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                                       ("Sec-WebSocket-Version", "13")])
    with serving(app) as port:
        answer = exchange(port, upgrade + request(target="/next", host="x"), methods=["GET", "GET"], timeout=WAIT)
    assert answer.statuses == [200] and answer.closed
    assert [scope["type"] for scope, _, _ in app.seen] == ["http"]


def test_an_upgrade_with_a_body_is_refused() -> None:
    # The parser never reads such a body: its bytes would become the next request.
    app = Recorder()
    data = request("POST", "/", "x", [("Connection", "Upgrade"), ("Upgrade", "h2c"), ("Content-Length", "40")],
                   b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n\r\n")
    with serving(app) as port:
        answer = exchange(port, data, methods=["POST", "GET"], timeout=WAIT)
    assert answer.statuses == [400]
    assert app.seen == []


# -- logging ------------------------------------------------------------------------------------


class StuckStream:
    """A stream whose writes wait until `release` is set (a pipe nobody reads)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.release.wait()
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_logging_to_a_stuck_stream_drops_records_instead_of_waiting() -> None:
    stream = StuckStream()
    handler = QueuedStreamHandler(stream, backlog=10)
    logger = logging.Logger("test-queued")  # not registered: leaves the process's logging alone
    logger.addHandler(handler)
    done = threading.Event()

    def log_many() -> None:
        for i in range(1000):
            logger.warning("record %d", i)
        done.set()

    threading.Thread(target=log_many, daemon=True).start()
    assert done.wait(WAIT), "logging waited for the stream"
    assert handler.dropped >= 1000 - 10 - 1  # the backlog, and one record the writer holds
    assert dropped_log_records() >= handler.dropped
    stream.release.set()
    handler.flush()
    assert stream.lines[0] == "record 0\n"


def test_the_log_config_queues_every_handler_and_the_root_logger() -> None:
    config = queued_log_config("error")
    assert all(handler["()"] is QueuedStreamHandler and "class" not in handler
               for handler in config["handlers"].values())
    assert config["root"] == {"handlers": ["service"], "level": "ERROR"}


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append([data])

    def writelines(self, data: list[bytes]) -> None:
        self.writes.append(list(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return None if name in ("socket", "sslcontext") else f"info {name}"  # as a transport on no socket


async def test_writes_in_one_turn_of_the_loop_go_out_as_one_in_order() -> None:
    real = FakeTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"ok")
    assert real.writes == []  # held until the turn ends
    await asyncio.sleep(0)
    assert real.writes == [[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"ok"]]
    transport.write(b"next")
    transport.close()  # what is held goes first
    assert real.writes[-1] == [b"next"] and real.closed
    assert transport.get_extra_info("peername") == "info peername"


@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two ends of a loopback TCP connection: (the server's, the client's)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with server, client:
        yield server, client


async def received(sock: socket.socket, size: int) -> bytes:
    sock.setblocking(False)
    data = bytearray()
    while len(data) < size:
        data += await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 1 << 16), WAIT)
    return bytes(data)


async def test_a_body_file_is_sent_with_sendfile_in_order_and_whole_when_the_socket_takes_part(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []

    def sendfile(out: int, fd: int, offset: int, count: int) -> int:
        sent.append(done := real_sendfile(out, fd, offset, count))
        return done

    real_sendfile = os.sendfile
    monkeypatch.setattr(os, "sendfile", sendfile)
    loop = asyncio.get_running_loop()
    body = os.urandom(1 << 20)
    file = BodyFile(body)
    with tcp_pair() as (ours, theirs):
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # it takes a part of the body at once
        real, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        transport = CoalescingTransport(real, loop)
        transport.send_file(b"head 1 ", file)  # the file, then the rest from memory through the transport
        transport.write(b"held ")
        transport.send_file(b"head 2 ", file)  # the transport has some still to write: from memory, after it
        expected = b"head 1 " + body + b"held head 2 " + body
        assert await received(theirs, len(expected)) == expected
        real.close()
    assert len(sent) == 1 and 0 < sent[0] < len(body)


@pytest.mark.parametrize("tls", [False, True])
async def test_a_body_file_is_written_from_memory_on_a_transport_with_no_plain_socket(tls: bool) -> None:
    with tcp_pair() as (ours, _):
        real = FakeTransport()
        if tls:  # the socket under TLS: what goes into it must be encrypted, never sent from a file
            real.get_extra_info = lambda name, default=None: {"socket": ours, "sslcontext": object()}.get(name)
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.send_file(b"head ", BodyFile(b"body"))
    assert real.writes == [[b"head ", b"body"]]


def test_a_body_file_holds_the_body_and_closes_its_file() -> None:
    file = BodyFile(b"x" * 100_000)
    assert os.pread(file.fd, 200_000, 0) == file.data and len(file) == 100_000
    fd = file.fd
    del file
    with pytest.raises(OSError):
        os.fstat(fd)


async def test_a_large_write_goes_at_once_so_flow_control_sees_it() -> None:
    real = FakeTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"head")
    transport.write(b"x" * CoalescingTransport.FLUSH_AT)
    assert real.writes == [[b"head", b"x" * CoalescingTransport.FLUSH_AT]]
    transport.write(b"tail")
    await asyncio.sleep(0)
    assert real.writes[-1] == [b"tail"]
    real.closed = True
    transport.write(b"too late")
    await asyncio.sleep(0)
    assert real.writes[-1] == [b"tail"]  # nothing is written to a closing transport


# -- response heads the app has checked ------------------------------------------------------
def new_cycle(kind: type[RequestResponseCycle], method: str, keep_alive: bool = True) -> RequestResponseCycle:
    """A cycle as uvicorn makes one, writing to a FakeTransport."""
    transport = FakeTransport()
    return kind(scope={"type": "http", "method": method, "headers": []}, transport=transport,  # type: ignore[arg-type]
                flow=FlowControl(transport), logger=logging.getLogger("test"),  # type: ignore[arg-type]
                access_logger=logging.getLogger("test"), access_log=False, default_headers=[(b"server", b"t")],
                message_event=asyncio.Event(), expect_100_continue=False, keep_alive=keep_alive,
                on_response=lambda: None)


async def written_by(kind: type[RequestResponseCycle], method: str, start: dict[str, Any], body: bytes,
                     keep_alive: bool = True) -> tuple[Any, ...]:
    """What a cycle of `kind` writes for a response and the state it is left in, or the error it raises."""
    cycle = new_cycle(kind, method, keep_alive)
    try:
        await cycle.send({"type": "http.response.start", **start})
        await cycle.send({"type": "http.response.body", "body": body})
    except (RuntimeError, ValueError) as exc:
        return type(exc), str(exc)
    return (cycle.transport.writes, cycle.keep_alive, cycle.response_complete,  # type: ignore[attr-defined]
            cycle.expected_content_length)


HIT_FIELDS = [(b"content-type", b"text/plain"), (b"cache-control", b"max-age=60"), (b"x-tab", b"a\tb"),
              (b"content-length", b"2"), (b"age", b"3"), (b"cache-status", b"e; hit; ttl=57")]


@pytest.mark.parametrize(("method", "keep_alive", "body"), [
    ("GET", True, b"ok"),
    ("GET", False, b"ok"),  # connection: close added, as uvicorn adds it
    ("HEAD", True, b""),
    ("GET", True, b"too long"),  # the body is still counted against the length
])
async def test_a_head_the_app_checked_is_written_as_uvicorn_writes_it(method: str, keep_alive: bool,
                                                                      body: bytes) -> None:
    length = 0 if method == "HEAD" else 2
    checked = {"status": 200, "headers": HIT_FIELDS, CHECKED_FIELDS: length}
    ours = await written_by(ResponseCycle, method, checked, body, keep_alive)
    assert ours == await written_by(RequestResponseCycle, method, {"status": 200, "headers": HIT_FIELDS}, body,
                                    keep_alive)


@pytest.mark.parametrize("headers", [
    [(b"content-type", b"text/plain")],  # no length: chunked
    [(b"Content-Length", b"2"), (b"Connection", b"keep-alive, close")],
    [(b"content-length", b"2"), (b"bad name", b"v")],
    [(b"content-length", b"2"), (b"x-bad", b"line\r\nbreak")],
    [(b"content-length", b"two")],
])
async def test_a_head_the_app_did_not_check_is_uvicorns_to_check(headers: list[tuple[bytes, bytes]]) -> None:
    start = {"status": 200, "headers": headers}
    assert await written_by(ResponseCycle, "GET", start, b"ok") == await written_by(RequestResponseCycle, "GET",
                                                                                     start, b"ok")


@pytest.mark.parametrize(("fields", "checked"), [
    (HIT_FIELDS[:3] + HIT_FIELDS[4:], True),
    ([(b"Content-Type", b"text/plain")], False),  # upper case: uvicorn would write it lower-cased
    ([(b"x y", b"v")], False),
    ([(b"x-a", b"v\x01")], False),
    ([(b"x-a", b"v\r\nx-injected: 1")], False),
    ([(b"content-length", b"2")], False),  # framing fields stay uvicorn's
    ([(b"transfer-encoding", b"chunked")], False),
    ([(b"connection", b"close")], False),
])
def test_only_fields_that_pass_uvicorns_checks_and_do_not_frame_count_as_checked(
        fields: list[tuple[bytes, bytes]], checked: bool) -> None:
    assert fields_checked(fields) is checked


def test_the_server_sends_responses_through_its_own_cycle() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = type(send.__self__).__name__.encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))],
                    CHECKED_FIELDS: len(body)})
        await send({"type": "http.response.body", "body": body})

    with serving(app) as port:
        answer = exchange(port, request(target="/", host="x") * 2, methods=["GET", "GET"], timeout=WAIT)
        assert [r.body for r in answer.responses] == [b"ResponseCycle"] * 2  # and the connection still serves


# -- answered while parsing ------------------------------------------------------------------
def serving_answers(app: Any, **options: Any) -> contextlib.AbstractContextManager[int]:
    """`serving` as the services run: without uvicorn's proxy-headers middleware, which would hide `answer_now`."""
    return serving(app, proxy_headers=False, **options)




class Answering:
    """Answers GET and HEAD of /now with `body` while the server parses them (`answer_now`); through ASGI, /asgi
    with the same response and /slow with `b"slow"` after `delay` seconds. Records what reached each."""

    def __init__(self, delay: float = 0.0, body: bytes = b"ok") -> None:
        self.delay = delay
        self.body = body
        self.fields = [(b"content-type", b"text/plain"), (b"x-a", b"1"), (b"content-length", b"%d" % len(body))]
        self.asked: list[str] = []  # paths answer_now was asked for
        self.called: list[str] = []  # paths the ASGI app was called for
        self.scopes: list[dict[str, Any]] = []  # the scopes answer_now, then the app, got

    def answer_now(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                   scope: Callable[[], dict[str, Any]]) -> tuple[int, bytes, bytes] | None:
        made = scope()
        self.asked.append(made["path"])
        self.scopes.append(dict(made, headers=list(made["headers"]), answer_now=(method, target, list(headers))))
        if made["path"] != "/now":
            return None
        return 200, b"".join(b"%s: %s\r\n" % field for field in self.fields), self.body  # the body even for HEAD

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.called.append(scope["path"])
        self.scopes.append(scope)
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/slow":
            await asyncio.sleep(self.delay)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
            await send({"type": "http.response.body", "body": b"slow"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.fields})
        await send({"type": "http.response.body", "body": self.body})


@pytest.mark.parametrize("method", ["GET", "HEAD"])  # HEAD: the head alone, whatever body the app gave
@pytest.mark.parametrize("size", [2, JOIN_BODY_BELOW + 1])  # a larger body goes out beside its head, not in it
def test_an_answer_now_is_written_as_uvicorn_writes_the_same_response(method: str, size: int) -> None:
    app = Answering(body=b"k" * size)
    with serving_answers(app, date_header=False) as port:  # default fields, but for one that changes each second
        now = exchange(port, request(method, "/now", host="x"), [method], WAIT)
        asgi = exchange(port, request(method, "/asgi", host="x"), [method], WAIT)
    assert now.responses and now.raw == asgi.raw
    assert app.called == ["/asgi"] and app.asked == ["/now", "/asgi"]


@pytest.mark.parametrize(("target", "version"), [("/a%20b/%C3%A9?q=1&r", "HTTP/1.1"), ("/asgi?", "HTTP/1.0"),
                                                  ("http://y/abs?q", "HTTP/1.1")])
def test_answer_now_gets_the_request_as_the_app_s_scope_gives_it(target: str, version: str) -> None:
    app = Answering()
    with serving_answers(app) as port:
        exchange(port, request("GET", target, host="x", headers=[("X-A", "1"), ("Accept", "*/*")], version=version),
                 timeout=WAIT)
    asked, called = app.scopes
    method, raw_target, headers = asked.pop("answer_now")
    assert asked == {key: called[key] for key in asked}
    assert asked["headers"][1] == (b"x-a", b"1")
    assert (method, raw_target, headers) == (b"GET", target.encode(), called["headers"])  # as they came


def test_nothing_is_answered_now_under_a_root_path() -> None:
    app = Answering()  # the target answer_now gets does not hold the root path the app's scope would
    with serving_answers(app, root_path="/mounted") as port:
        assert exchange(port, request("GET", "/now", host="x"), timeout=WAIT).status == 200
    assert app.asked == [] and app.called == ["/mounted/now"]


@pytest.mark.parametrize(("headers", "version"), [([("Connection", "close")], "HTTP/1.1"), ([], "HTTP/1.0"),
                                                  ([("Connection", "keep-alive")], "HTTP/1.0")])
def test_a_connection_answered_for_the_last_time_is_closed_after_the_answer(headers: list[tuple[str, str]],
                                                                           version: str) -> None:
    # Idle connections are kept far longer than read_until_closed waits: only closing after the answer passes.
    with serving_answers(Answering(), date_header=False, timeout_keep_alive=6 * WAIT) as port:
        said = {}
        for path in ("/now", "/asgi"):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(request("GET", path, host="x", headers=headers, version=version))
                said[path] = read_until_closed(sock)
    assert said["/now"] == said["/asgi"] and said["/now"].endswith(b"connection: close\r\n\r\nok")


@pytest.mark.parametrize("framing", [[("Content-Length", "2")], [("Transfer-Encoding", "chunked")]])
def test_a_request_with_a_body_goes_to_the_app(framing: list[tuple[str, str]]) -> None:
    body = b"ok" if framing[0][0] == "Content-Length" else b"2\r\nok\r\n0\r\n\r\n"
    app = Answering()
    with serving_answers(app) as port:
        answer = exchange(port, request("GET", "/now", host="x", headers=framing, body=body), timeout=WAIT)
    assert answer.status == 200
    assert app.asked == [] and app.called == ["/now"]


def test_nothing_is_answered_now_under_uvicorn_s_concurrency_limit() -> None:
    app = Answering()  # uvicorn counts the limit in tasks, which an answer does not start
    with serving_answers(app, limit_concurrency=100) as port:
        assert exchange(port, request("GET", "/now", host="x"), timeout=WAIT).status == 200
    assert app.asked == [] and app.called == ["/now"]


def test_an_answer_now_that_fails_leaves_the_request_to_the_app() -> None:
    app = Answering()

    def failing(*request: Any) -> None:
        raise RuntimeError("a bug in answer_now")

    app.answer_now = failing  # type: ignore[method-assign]
    with serving_answers(app) as port:
        answer = exchange(port, request("GET", "/now", host="x") * 2, ["GET"] * 2, WAIT)
    assert [r.body for r in answer.responses] == [b"ok", b"ok"] and app.called == ["/now", "/now"]


def test_pipelined_requests_are_answered_in_order_whichever_way_each_is_answered() -> None:
    app = Answering(delay=SHORT)
    with serving_answers(app) as port:
        sent = request("GET", "/now", host="x") * 2 + request("GET", "/slow", host="x") + request("GET", "/now", host="x")
        answer = exchange(port, sent, ["GET"] * 4, WAIT)
    assert [r.body for r in answer.responses] == [b"ok", b"ok", b"slow", b"ok"]
    assert app.called == ["/slow", "/now"]  # behind a response still being made, it waits its turn in the app


def test_a_connection_kept_busy_with_answers_outlives_the_keep_alive_timeout() -> None:
    # One keep-alive timer serves many answers, and counts from the last of them when it fires. Requests
    # come twelve times as often as the timeout, so a slow machine does not make the client look idle.
    keep_alive = 4 * SHORT
    with serving_answers(Answering(), timeout_keep_alive=keep_alive) as port, \
            socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(WAIT)
        deadline = time.monotonic() + 2 * keep_alive
        while time.monotonic() < deadline:
            sock.sendall(request("GET", "/now", host="x"))
            assert sock.recv(65536).endswith(b"\r\n\r\nok")
            time.sleep(keep_alive / 12)
        assert read_until_closed(sock) == b""  # then idle: closed after the timeout


def test_an_answer_is_not_cut_short_by_the_keep_alive_timeout_of_the_one_before() -> None:
    app = Answering(delay=3 * SHORT)
    with serving_answers(app, timeout_keep_alive=SHORT) as port:
        answer = exchange(port, request("GET", "/now", host="x") + request("GET", "/slow", host="x"), ["GET"] * 2,
                          WAIT)
    assert [r.body for r in answer.responses] == [b"ok", b"slow"]


def test_half_a_head_after_an_answer_still_gets_408() -> None:
    with serving_answers(Answering(), timeout_keep_alive=SHORT / 3) as port, \
            socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request("GET", "/now", host="x") + b"GET /now HTTP/1.1\r\nHost: x\r\n")
        answered = read_until_closed(sock)
    first, _, refused = answered.partition(b"HTTP/1.1 408 ")
    assert first.endswith(b"\r\n\r\nok") and refused  # not closed quietly as an idle connection would be
