"""The HTTP/1.1 client of the front door (toward edges) and of the edge (toward parents and origins).

Keep-alive connections, bodies streamed both ways. Every request through the
front door makes one request to an edge, and every edge miss one to an origin,
so this is on both hot paths. httpx spends about a millisecond of CPU per
request on a small machine (its URL model, h11, anyio, and a pool that scans
every connection per request), more than the rest of an edge's miss; this
client is an asyncio protocol around the httptools parser that uvicorn also
uses. It speaks only what a proxy needs: one request at a time per connection,
Content-Length or chunked bodies, interim (1xx) responses skipped.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

from balancer.pool import Failure

IDLE_EXPIRY = 2.0  # seconds an idle connection is kept: well before common server keep-alive timeouts (Node: 5 s)
MAX_IDLE_PER_SERVER = 128
MAX_PER_SERVER = 512  # connections in use at once to one server; more requests wait for one (httpx's limit)
MAX_HEAD = 100 * 1024  # bytes of a response's status line and fields, as httpx allowed
READ_HIGH_WATER = 256 * 1024  # response bytes buffered before the server is asked to pause
NO_BODY_STATUSES = frozenset({204, 304})
# A request target is sent as given: it must not be able to end the request line early.
BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")


class UpstreamError(Exception):
    """No usable response from the server; `failure` says what kind of failure it was."""

    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message


class BadRequestHead(ValueError):
    """The request cannot be sent as given: a target or field that would break HTTP's framing."""


class _StrayBytes(Exception):
    """The server sent bytes past the end of its response."""


class _HeadTooLarge(Exception):
    """The response's head is larger than MAX_HEAD."""


@lru_cache(maxsize=256)
def _address(base: str) -> tuple[str, int, bool]:
    parts = urlsplit(base)
    secure = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if secure else 80), secure


def request_head(method: str, target: str, headers: list[tuple[bytes, bytes]], trailer: bytes = b"") -> bytes:
    """The request line and fields; BadRequestHead when a target or field would break the framing."""
    try:
        raw_target = target.encode("latin-1")
    except UnicodeEncodeError:
        raise BadRequestHead(f"request target is not Latin-1: {target!r}") from None
    if not raw_target or BAD_TARGET.search(raw_target):
        raise BadRequestHead(f"request target has a control character or space: {target!r}")
    lines = [b"%b %b HTTP/1.1\r\n" % (method.encode("ascii"), raw_target)]
    lines += [b"%b: %b\r\n" % field for field in headers]
    lines.append(trailer)
    lines.append(b"\r\n")
    head = b"".join(lines)
    # Every line ends in CRLF, so any other CR, LF or NUL came inside a name or value.
    if head.count(b"\n") != len(lines) - (trailer == b"") or head.count(b"\r") != head.count(b"\n") or b"\0" in head:
        raise BadRequestHead("a request field has a CR, LF or NUL in it")
    return head


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to a server, carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int, bool], peer: str) -> None:
        self.loop = loop
        self.key = key
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.closed = False
        self.reusable = True
        self.head_only = False  # the request is a HEAD: the response ends with its head
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        self._start_response()

    def _start_response(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.head_size = 0
        self.complete = False
        self.until_close = False  # no length given: the body ends when the connection does
        self.pieces: list[bytes] = []
        self.buffered = 0
        self.received = False
        self.error: Exception | None = None

    # -- asyncio protocol ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Bytes nobody asked for: the framing of an earlier response was wrong. Reusing the
            # connection would hand them to the next request as its answer (a request desync).
            self.close()
            return
        self.received = True
        if not self.head_done:
            # Counted here too: httptools reports a field only once it has ended, and one that never
            # ends would otherwise be buffered until the response timeout.
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self.reusable = False
            if isinstance(exc.__context__, _HeadTooLarge):
                self.error = exc.__context__
            elif not isinstance(exc.__context__, _StrayBytes):
                self.error = exc
        except httptools.HttpParserError as exc:
            self.reusable = False
            self.error = exc
        if not self.head_done and self.head_size > MAX_HEAD and self.error is None:
            self.error = _HeadTooLarge(f"response head larger than {MAX_HEAD} bytes")
            self.close()
        if self.buffered > READ_HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.reusable = False
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- httptools callbacks ---------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            raise _StrayBytes()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if sum(len(k) + len(v) + 4 for k, v in self.headers) > MAX_HEAD:  # a head that arrived in one read
            raise _HeadTooLarge(f"response head larger than {MAX_HEAD} bytes")
        self.status = self.parser.get_status_code()
        self.head_done = True
        framed = any(k in (b"content-length", b"transfer-encoding") for k, _ in self.headers)
        if self.head_only and self.status >= 200:
            # The parser would wait for the body the fields announce; a HEAD response has none
            # (RFC 9110 §9.3.2). The connection gets a new parser when it is handed back.
            self.complete = True
            if not (framed or self.status in NO_BODY_STATUSES) or not self.parser.should_keep_alive():
                self.reusable = False
            return
        self.until_close = self.status >= 200 and self.status not in NO_BODY_STATUSES and not framed

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.status < 200:  # an interim response (100 Continue, 103 Early Hints): the real one follows
            self._start_response()
            return
        self.complete = True
        if not self.parser.should_keep_alive():
            self.reusable = False

    # -- the request -----------------------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def send(self, head: bytes, body: bytes | AsyncIterable[bytes] | None, chunked: bool,
                   timeout: float, head_only: bool = False) -> None:
        """Write the request head and the body: whole, or streamed (chunk-framed when its length is unknown).

        Waiting for the client's body has no limit here (the server's own applies); a server that
        stops taking the body for `timeout` seconds is a timeout.
        """
        assert self.transport is not None
        self.busy = True
        self.head_only = head_only
        self._start_response()
        if body is None or isinstance(body, bytes):
            self.transport.write(head + body if body else head)
            return
        self.transport.write(head)
        async for chunk in body:
            if self.head_done or self.closed:
                # The server answered or hung up before taking the whole body (a 413, say): its answer,
                # if any, is what counts, and the connection is left mid-request.
                self.reusable = False
                return
            if chunk:
                self.transport.writelines([b"%x\r\n" % len(chunk), chunk, b"\r\n"] if chunked else [chunk])
            if self._writable is not None:
                async with asyncio.timeout(timeout):
                    await self._writable
        if chunked:
            self.transport.write(b"0\r\n\r\n")

    async def read_head(self) -> None:
        """Wait until the response's status line and fields have arrived."""
        while not self.head_done:
            if self.error is not None:
                raise UpstreamError(Failure.PROTOCOL, f"{self.peer} answered with something that is not HTTP: "
                                                      f"{self.error}")
            if self.closed or not self.reusable and not self.received:
                raise ConnectionResetError(f"{self.peer} closed the connection without a response")
            await self._wait()
        if not 100 <= self.status <= 599:  # RFC 9110 §15: three digits, the first 1 to 5
            self.reusable = False
            raise UpstreamError(Failure.PROTOCOL, f"{self.peer} sent an invalid status code {self.status}")

    async def body(self, timeout: float) -> AsyncIterator[bytes]:
        """The response body as it arrives; UpstreamError if it is cut short or stalls for `timeout` seconds."""
        while True:
            if self.pieces:
                pieces, self.pieces, self.buffered = self.pieces, [], 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                # All that arrived since the last wake as one chunk: one write to the client, not one per read.
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                continue
            if self.complete:
                return
            if self.error is not None:
                raise UpstreamError(Failure.PROTOCOL, f"{self.peer} sent a malformed body: {self.error}")
            if self.closed:
                if self.until_close:
                    self.complete = True
                    return
                raise UpstreamError(Failure.PROTOCOL, f"{self.peer} closed the connection before the body was complete")
            try:
                async with asyncio.timeout(timeout):
                    await self._wait()
            except TimeoutError:
                raise UpstreamError(Failure.TIMEOUT, f"{self.peer} sent no body data for {timeout}s") from None

    def reset_after_head(self) -> None:
        """After a HEAD exchange: a new parser, since the old one still waits for the announced body."""
        if self.pieces or self.error is not None:
            self.close()  # bytes after a HEAD response's head: its framing cannot be trusted
            return
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = False

    def close(self) -> None:
        """Close the connection (it is never reused after)."""
        self.reusable = False
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


class Response:
    """A server's response: status and fields (names in lower case) now, the body to be read with
    `chunks()`; always `close()` it."""

    __slots__ = ("status", "raw_headers", "_connection", "_client", "_timeout")

    def __init__(self, connection: Connection, client: HttpClient, timeout: float) -> None:
        self.status = connection.status
        self.raw_headers = connection.headers
        self._connection: Connection | None = connection
        self._client = client
        self._timeout = timeout

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived and been handed out by `chunks()`."""
        connection = self._connection
        return connection is not None and connection.complete and not connection.pieces

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk (transfer coding removed); nothing for HEAD, 204 and 304."""
        if self._connection is None or self._connection.head_only:
            return _nothing()
        return self._connection.body(self._timeout)

    async def close(self) -> None:
        """Hand the connection back for reuse when the exchange ended cleanly; else close it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._client.release(connection)


class HttpClient:
    """Keep-alive connections to servers: at most `max_per_server` in use at once to each (a request
    beyond waits for one, up to the response timeout), and `MAX_IDLE_PER_SERVER` idle ones kept.

    `peer` names the servers in error messages ("edge", "origin").
    """

    def __init__(self, connect_timeout: float, response_timeout: float, peer: str = "server",
                 max_per_server: int = MAX_PER_SERVER) -> None:
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.peer = peer
        self.max_per_server = max_per_server
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._busy: set[Connection] = set()
        self._slots: dict[tuple[str, int, bool], asyncio.Semaphore] = {}
        self._tls: ssl.SSLContext | None = None

    async def open(self, method: str, base: str, target: str, headers: list[tuple[bytes, bytes]],
                   body: bytes | AsyncIterable[bytes] | None = None, chunked: bool = False,
                   replayable: bool = True) -> Response:
        """Send a request to the server at `base`; return once the response headers arrived.

        `headers` must carry Host and any Content-Length; with `chunked` the body
        is sent chunk-framed. A reused connection that turns out closed before any
        response byte is replaced once by a new one when the request is safe to
        repeat (`replayable`: idempotent, and its body can be sent again).
        BadRequestHead when the target or a field cannot be sent.
        """
        key = _address(base)
        head = request_head(method, target, headers, b"transfer-encoding: chunked\r\n" if chunked else b"")
        for fresh in (False, True):
            connection = await self._acquire(key, fresh)
            reused = connection.idle_since > 0
            try:
                await connection.send(head, body, chunked, self.response_timeout, head_only=method == "HEAD")
                async with asyncio.timeout(self.response_timeout):
                    await connection.read_head()
            except TimeoutError:
                self._discard(connection)
                raise UpstreamError(Failure.TIMEOUT, f"{self.peer} did not answer within {self.response_timeout}s") \
                    from None
            except (ConnectionError, OSError) as exc:
                self._discard(connection)
                if reused and not connection.received and replayable and not fresh:
                    continue  # the server closed an idle connection as we reused it: safe to repeat once
                raise UpstreamError(Failure.PROTOCOL, f"{self.peer} connection failed: {exc or type(exc).__name__}") \
                    from None
            except BaseException:
                self._discard(connection)
                raise
            return Response(connection, self, self.response_timeout)
        raise AssertionError("unreachable")  # the second try returns or raises

    async def _acquire(self, key: tuple[str, int, bool], fresh: bool) -> Connection:
        """A connection to `key`, holding one of its slots until `release` or `_discard`."""
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self.max_per_server)
        if slots.locked():
            try:
                async with asyncio.timeout(self.response_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise UpstreamError(Failure.TIMEOUT, f"no free connection to the {self.peer} within "
                                                     f"{self.response_timeout}s ({self.max_per_server} in use)") from None
        else:
            await slots.acquire()
        try:
            return await self._connection(key, fresh)
        except BaseException:
            slots.release()
            raise

    async def _connection(self, key: tuple[str, int, bool], fresh: bool) -> Connection:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle and not fresh:
            connection = idle.pop()  # the most recently used: older ones are left to expire
            if connection.reusable and not connection.closed and now - connection.idle_since < IDLE_EXPIRY:
                self._busy.add(connection)
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        host, port, secure = key
        if secure and self._tls is None:
            self._tls = ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(lambda: Connection(loop, key, self.peer), host, port,
                                                             ssl=self._tls if secure else None)
        except TimeoutError:
            raise UpstreamError(Failure.CONNECT, f"no connection to the {self.peer} within {self.connect_timeout}s") \
                from None
        except OSError as exc:
            raise UpstreamError(Failure.CONNECT, f"{self.peer} refused the connection: {exc.strerror or exc}") \
                from None
        self._busy.add(connection)
        return connection

    def release(self, connection: Connection) -> None:
        """Keep the connection for the next request if its last exchange ended cleanly."""
        self._busy.discard(connection)
        self._slots[connection.key].release()
        connection.busy = False
        if connection.head_only:
            connection.reset_after_head()
        if connection._paused and connection.transport is not None:
            # The body was left unread past the high-water mark: the next exchange must be read.
            connection._paused = False
            connection.transport.resume_reading()
        idle = self._idle.setdefault(connection.key, [])
        if not connection.complete or not connection.reusable or connection.closed or len(idle) >= MAX_IDLE_PER_SERVER:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def _discard(self, connection: Connection) -> None:
        self._busy.discard(connection)
        self._slots[connection.key].release()
        connection.close()

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        for connection in list(self._busy):
            connection.close()
        self._busy.clear()
