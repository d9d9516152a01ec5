"""The front door's HTTP/1.1 client: framing, keep-alive, and every way an edge can answer badly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from balancer.http_client import (
    MAX_HEAD,
    READ_HIGH_WATER,
    BadRequestHead,
    HttpClient,
    UpstreamError,
    request_head,
)
from balancer.pool import Failure
from tests.servers import free_port

HOST = [(b"host", b"shop.example")]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
CLOSE = b""  # as an answer: close the connection instead of answering


@dataclass
class RawEdge:
    """A TCP server that reads whole requests and answers each with the next scripted bytes."""

    answers: list[bytes]
    close_after: bool = False  # hang up after every answer
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                lower = head.lower()
                if b"content-length:" in lower:
                    length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                elif b"transfer-encoding: chunked" in lower:
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        body += (await reader.readexactly(size + 2))[:-2]
                        if size == 0:
                            break
                self.requests.append(head + body)
                answer = self.answers.pop(0) if self.answers else OK
                if answer == CLOSE:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        port = free_port()
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", port)
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def fetch(client: HttpClient, base: str, method: str = "GET", **kwargs: object) -> tuple[int, bytes]:
    response = await client.open(method, base, "/p", HOST, **kwargs)  # type: ignore[arg-type]
    try:
        return response.status, b"".join([chunk async for chunk in response.chunks()])
    finally:
        await response.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    edge_client = HttpClient(connect_timeout=2.0, response_timeout=2.0, peer="edge")
    yield edge_client
    await edge_client.aclose()


async def test_keep_alive_reuses_one_connection(client: HttpClient) -> None:
    edge = RawEdge([OK, OK, OK])
    async with edge as base:
        assert [await fetch(client, base) for _ in range(3)] == [(200, b"ok")] * 3
    assert edge.connections == 1
    assert edge.requests[0] == b"GET /p HTTP/1.1\r\nhost: shop.example\r\n\r\n"


async def test_bytes_past_a_response_are_never_read_as_the_next_answer(client: HttpClient) -> None:
    edge = RawEdge([b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON",
                    b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond"])
    async with edge as base:
        assert await fetch(client, base) == (200, b"ok")
        assert await fetch(client, base) == (200, b"second")
    assert edge.connections == 2


async def test_stray_bytes_arriving_while_idle_close_the_connection(client: HttpClient) -> None:
    connections = 0

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON")  # nobody asked
        await reader.read()  # the client hangs up
        writer.close()

    port = free_port()
    server = await asyncio.start_server(late, "127.0.0.1", port)
    try:
        assert await fetch(client, f"http://127.0.0.1:{port}") == (200, b"ok")
        await asyncio.sleep(0.5)
        assert await fetch(client, f"http://127.0.0.1:{port}") == (200, b"ok")
    finally:
        server.close()
    assert connections == 2


async def test_an_idle_connection_the_edge_closed_is_replaced_for_a_repeatable_request(client: HttpClient) -> None:
    edge = RawEdge([OK, CLOSE, OK])
    async with edge as base:
        assert await fetch(client, base) == (200, b"ok")
        assert await fetch(client, base) == (200, b"ok")  # the edge hung up on the reused connection
    assert edge.connections == 2


async def test_a_request_that_cannot_be_repeated_is_not_repeated(client: HttpClient) -> None:
    edge = RawEdge([OK, CLOSE, OK])
    async with edge as base:
        assert await fetch(client, base) == (200, b"ok")
        with pytest.raises(UpstreamError) as failed:
            await fetch(client, base, method="POST", replayable=False)
    assert failed.value.failure is Failure.PROTOCOL
    assert len(edge.requests) == 2


@pytest.mark.parametrize(("answer", "body"), [
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", b"abcdefg"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n", b""),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b"ok"),
])
async def test_bodies_are_framed_as_the_edge_says(client: HttpClient, answer: bytes, body: bytes) -> None:
    edge = RawEdge([answer, OK])
    async with edge as base:
        assert (await fetch(client, base))[1] == body
        assert await fetch(client, base) == (200, b"ok")
    assert edge.connections == 1


async def test_a_body_delimited_by_close_is_read_to_the_end(client: HttpClient) -> None:
    edge = RawEdge([b"HTTP/1.0 200 OK\r\n\r\nuntil the end"], close_after=True)
    async with edge as base:
        assert await fetch(client, base) == (200, b"until the end")


@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                                  b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 304 Not Modified\r\netag: \"v\"\r\n\r\n"])
async def test_a_head_response_ends_with_its_head_and_the_connection_is_reused(client: HttpClient, head: bytes) -> None:
    edge = RawEdge([head, head, OK])
    async with edge as base:
        assert (await fetch(client, base, method="HEAD"))[1] == b""
        assert (await fetch(client, base, method="HEAD"))[1] == b""
        assert await fetch(client, base) == (200, b"ok")
    assert edge.connections == 1


async def test_a_body_sent_after_a_head_response_is_never_read_as_the_next_answer(client: HttpClient) -> None:
    edge = RawEdge([b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON", OK])
    async with edge as base:
        response = await client.open("HEAD", base, "/p", HOST)
        await asyncio.sleep(0.2)  # the stray body arrives before the connection is handed back
        await response.close()
        assert await fetch(client, base) == (200, b"ok")
    assert edge.connections == 2


async def test_a_head_response_without_a_length_is_not_reused(client: HttpClient) -> None:
    edge = RawEdge([b"HTTP/1.1 200 OK\r\n\r\n", OK])
    async with edge as base:
        assert await fetch(client, base, method="HEAD") == (200, b"")
        assert await fetch(client, base) == (200, b"ok")
    assert edge.connections == 2


async def test_a_streamed_body_is_sent_chunked_and_a_sized_one_as_is(client: HttpClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        for piece in (b"one", b"", b"two"):
            yield piece

    edge = RawEdge([OK, OK])
    async with edge as base:
        await client.open("PUT", base, "/up", HOST, body(), chunked=True)
        await client.open("PUT", base, "/up", [*HOST, (b"content-length", b"6")], body())
    assert edge.requests[0].endswith(b"transfer-encoding: chunked\r\n\r\nonetwo")
    assert edge.requests[1].endswith(b"content-length: 6\r\n\r\nonetwo")


async def test_an_early_answer_stops_the_upload_and_is_delivered(client: HttpClient) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536
            await asyncio.sleep(0)

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbig!")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    port = free_port()
    server = await asyncio.start_server(refuse, "127.0.0.1", port)
    try:
        assert await fetch(client, f"http://127.0.0.1:{port}", method="POST", body=endless(), chunked=True) \
            == (413, b"big!")
    finally:
        server.close()


@pytest.mark.parametrize(("answer", "failure"), [
    (b"HTTP/1.1 999 Nine\r\ncontent-length: 0\r\n\r\n", Failure.PROTOCOL),
    (b"SMTP ready\r\n\r\n", Failure.PROTOCOL),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx", Failure.PROTOCOL),
    (CLOSE, Failure.PROTOCOL),
])
async def test_answers_that_are_not_http_are_protocol_failures(client: HttpClient, answer: bytes,
                                                               failure: Failure) -> None:
    async with RawEdge([answer]) as base:
        with pytest.raises(UpstreamError) as failed:
            await fetch(client, base)
    assert failed.value.failure is failure


async def test_a_body_cut_short_fails_while_reading(client: HttpClient) -> None:
    async with RawEdge([b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"], close_after=True) as base:
        response = await client.open("GET", base, "/p", HOST)
        with pytest.raises(UpstreamError) as failed:
            async for _ in response.chunks():
                pass
        await response.close()
    assert failed.value.failure is Failure.PROTOCOL


async def test_refused_and_silent_edges_are_connect_and_timeout_failures() -> None:
    client = HttpClient(connect_timeout=1.0, response_timeout=0.3, peer="edge")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    port = free_port()
    server = await asyncio.start_server(silent, "127.0.0.1", port)
    try:
        with pytest.raises(UpstreamError) as refused:
            await client.open("GET", f"http://127.0.0.1:{free_port()}", "/", HOST)
        with pytest.raises(UpstreamError) as silence:
            await client.open("GET", f"http://127.0.0.1:{port}", "/", HOST)
    finally:
        server.close()
        await client.aclose()
    assert refused.value.failure is Failure.CONNECT
    assert silence.value.failure is Failure.TIMEOUT


async def test_a_response_head_larger_than_the_limit_is_a_protocol_failure(client: HttpClient) -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"a" * MAX_HEAD + b"\r\ncontent-length: 2\r\n\r\nok"
    async with RawEdge([huge]) as base:
        with pytest.raises(UpstreamError) as failed:
            await fetch(client, base)
    assert failed.value.failure is Failure.PROTOCOL
    assert "larger than" in failed.value.message


async def test_a_whole_body_is_sent_after_the_head(client: HttpClient) -> None:
    edge = RawEdge([OK])
    async with edge as base:
        response = await client.open("POST", base, "/p", [*HOST, (b"content-length", b"3")], b"a=1")
        await response.close()
    assert edge.requests[0] == b"POST /p HTTP/1.1\r\nhost: shop.example\r\ncontent-length: 3\r\n\r\na=1"


@pytest.mark.parametrize(("target", "fields"), [
    ("/a b", HOST),
    ("/a\r\nx-injected: 1", HOST),
    ("", HOST),
    ("/caf\u00e9\u20ac", HOST),
    ("/p", [(b"x-note", b"one\r\nx-injected: 1")]),
    ("/p", [(b"x-note", b"bare\nnewline")]),
    ("/p", [(b"x-note", b"nul\0")]),
    ("/p", [(b"x-note\r\nx-injected", b"1")]),
])
async def test_a_request_that_would_break_the_framing_is_refused_before_sending(client: HttpClient, target: str,
                                                                               fields: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(BadRequestHead):
        request_head("GET", target, fields)
    edge = RawEdge([OK])
    async with edge as base:
        with pytest.raises(BadRequestHead):
            await client.open("GET", base, target, fields)
    assert edge.connections == 0


def test_a_valid_request_head_is_sent_as_given() -> None:
    assert request_head("GET", "/p?q=%20", [(b"host", b"a"), (b"x-obs", b"caf\xe9")], b"transfer-encoding: chunked\r\n") \
        == b"GET /p?q=%20 HTTP/1.1\r\nhost: a\r\nx-obs: caf\xe9\r\ntransfer-encoding: chunked\r\n\r\n"


async def test_a_head_that_never_ends_fails_once_past_the_limit_not_at_the_timeout() -> None:
    client = HttpClient(connect_timeout=2.0, response_timeout=30.0)

    async def endless_field(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nx-pad: ")
        try:
            for _ in range(4 * MAX_HEAD // 4096):
                writer.write(b"a" * 4096)
                await writer.drain()
            await asyncio.sleep(30)
        except ConnectionError:
            pass
        writer.close()

    port = free_port()
    server = await asyncio.start_server(endless_field, "127.0.0.1", port)
    try:
        async with asyncio.timeout(10):  # well before the 30 s response timeout
            with pytest.raises(UpstreamError) as failed:
                await client.open("GET", f"http://127.0.0.1:{port}", "/", HOST)
    finally:
        server.close()
        await client.aclose()
    assert failed.value.failure is Failure.PROTOCOL and "larger than" in failed.value.message


async def test_a_connection_handed_back_with_its_reading_paused_serves_the_next_request(client: HttpClient) -> None:
    big = b"x" * (READ_HIGH_WATER + 64 * 1024)
    edge = RawEdge([b"HTTP/1.1 503 Busy\r\ncontent-length: %d\r\n\r\n%b" % (len(big), big), OK])
    async with edge as base:
        response = await client.open("GET", base, "/p", HOST)
        for _ in range(50):  # the whole body arrives unread, past the high-water mark
            if response.complete or response._connection.complete:
                break
            await asyncio.sleep(0.02)
        await response.close()  # not read: a stale copy was served instead, say
        assert await fetch(client, base) == (200, b"ok")
    assert edge.connections == 1


async def test_requests_beyond_the_connection_limit_wait_for_a_free_one() -> None:
    client = HttpClient(connect_timeout=2.0, response_timeout=0.5, max_per_server=2)
    edge = RawEdge([OK] * 10)
    async with edge as base:
        held = [await client.open("GET", base, "/p", HOST) for _ in range(2)]
        with pytest.raises(UpstreamError) as waited:  # both in use for longer than a response may take
            await client.open("GET", base, "/p", HOST)
        assert waited.value.failure is Failure.TIMEOUT and "2 in use" in waited.value.message
        third = asyncio.create_task(fetch(client, base))
        await asyncio.sleep(0.1)
        assert not third.done()  # still waiting for a slot
        await held[0].close()
        assert await third == (200, b"ok")
        await held[1].close()
    await client.aclose()
    assert edge.connections == 2
