"""The front door's HTTP/1.1 client toward its edges: keep-alive connections, bodies streamed both ways.

Every request through the front door makes one request to an edge, so this is
its hot path. httpx spends milliseconds of CPU per request on a small machine
(its connection pool alone scans every connection per request), far more than
an edge's cache hit costs; this client is an asyncio protocol around the
httptools parser that uvicorn also uses. It speaks only what edges need:
one request at a time per connection, Content-Length or chunked bodies.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

from balancer.pool import Failure

IDLE_EXPIRY = 2.0  # seconds an idle connection is kept: well before common server keep-alive timeouts (Node: 5 s)
MAX_IDLE_PER_EDGE = 128
READ_HIGH_WATER = 256 * 1024  # response bytes buffered before the edge is asked to pause
READ_SIZE_HINT = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304})


class EdgeError(Exception):
    """No usable response from an edge; `failure` says what kind of failure it was."""

    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message


class _StrayBytes(Exception):
    """The edge sent bytes past the end of its response."""


@lru_cache(maxsize=256)
def _address(base: str) -> tuple[str, int, bool]:
    parts = urlsplit(base)
    secure = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if secure else 80), secure


class EdgeConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an edge, carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int, bool]) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        self._start_response()

    def _start_response(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
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
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self.reusable = False
            if not isinstance(exc.__context__, _StrayBytes):
                self.error = exc
        except httptools.HttpParserError as exc:
            self.reusable = False
            self.error = exc
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
        self.status = self.parser.get_status_code()
        self.head_done = True
        self.until_close = (self.status >= 200 and self.status not in NO_BODY_STATUSES
                            and not any(k in (b"content-length", b"transfer-encoding") for k, _ in self.headers))

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

    async def send(self, head: bytes, body: AsyncIterable[bytes] | None, chunked: bool, timeout: float) -> None:
        """Write the request head and stream the body (chunk-framed when its length is unknown).

        Waiting for the client's body has no limit here (the server's own applies); an edge that
        stops taking the body for `timeout` seconds is a timeout.
        """
        assert self.transport is not None
        self.busy = True
        self._start_response()
        self.transport.write(head)
        if body is None:
            return
        async for chunk in body:
            if self.head_done or self.closed:
                # The edge answered or hung up before taking the whole body (a 413, say): its answer,
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
                raise EdgeError(Failure.PROTOCOL, f"edge answered with something that is not HTTP: {self.error}")
            if self.closed or not self.reusable and not self.received:
                raise ConnectionResetError("edge closed the connection without a response")
            await self._wait()
        if not 100 <= self.status <= 599:  # RFC 9110 §15: three digits, the first 1 to 5
            self.reusable = False
            raise EdgeError(Failure.PROTOCOL, f"edge sent an invalid status code {self.status}")

    async def body(self, timeout: float) -> AsyncIterator[bytes]:
        """The response body as it arrives; EdgeError if it is cut short or stalls for `timeout` seconds."""
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
                raise EdgeError(Failure.PROTOCOL, f"edge sent a malformed body: {self.error}")
            if self.closed:
                if self.until_close:
                    self.complete = True
                    return
                raise EdgeError(Failure.PROTOCOL, "edge closed the connection before the body was complete")
            try:
                async with asyncio.timeout(timeout):
                    await self._wait()
            except TimeoutError:
                raise EdgeError(Failure.TIMEOUT, f"edge sent no body data for {timeout}s") from None

    def close(self) -> None:
        """Close the connection (it is never reused after)."""
        self.reusable = False
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


class EdgeResponse:
    """An edge's response: status and fields now, the body to be read with `chunks()`; always `close()` it."""

    __slots__ = ("status", "raw_headers", "_connection", "_client", "_timeout", "_head_only")

    def __init__(self, connection: EdgeConnection, client: EdgeClient, timeout: float, head_only: bool) -> None:
        self.status = connection.status
        self.raw_headers = connection.headers
        self._connection: EdgeConnection | None = connection
        self._client = client
        self._timeout = timeout
        self._head_only = head_only

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived and been handed out by `chunks()`."""
        connection = self._connection
        return connection is not None and connection.complete and not connection.pieces

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk (transfer coding removed); nothing for HEAD, 204 and 304."""
        if self._connection is None or self._head_only:
            return _nothing()
        return self._connection.body(self._timeout)

    async def close(self) -> None:
        """Hand the connection back for reuse when the exchange ended cleanly; else close it."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._head_only:
            # The parser would wait for the body a HEAD response announces but never sends.
            connection.close()
        else:
            self._client.release(connection)


class EdgeClient:
    """Keep-alive connections to edges, at most `MAX_IDLE_PER_EDGE` idle ones each."""

    def __init__(self, connect_timeout: float, response_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self._idle: dict[tuple[str, int, bool], list[EdgeConnection]] = {}
        self._busy: set[EdgeConnection] = set()
        self._tls: ssl.SSLContext | None = None

    async def open(self, method: str, base: str, target: str, headers: list[tuple[bytes, bytes]],
                   body: AsyncIterable[bytes] | None = None, chunked: bool = False,
                   replayable: bool = True) -> EdgeResponse:
        """Send a request to the edge at `base`; return once the response headers arrived.

        `headers` must carry Host and any Content-Length; with `chunked` the body
        is sent chunk-framed. A reused connection that turns out closed before any
        response byte is replaced once by a new one when the request is safe to
        repeat (`replayable`: idempotent, and its body can be sent again).
        """
        key = _address(base)
        lines = [b"%b %b HTTP/1.1\r\n" % (method.encode("ascii"), target.encode("latin-1"))]
        lines += [b"%b: %b\r\n" % field for field in headers]
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        for fresh in (False, True):
            connection = await self._acquire(key, fresh)
            reused = connection.idle_since > 0
            try:
                await connection.send(head, body, chunked, self.response_timeout)
                async with asyncio.timeout(self.response_timeout):
                    await connection.read_head()
            except TimeoutError:
                self._discard(connection)
                raise EdgeError(Failure.TIMEOUT, f"edge did not answer within {self.response_timeout}s") from None
            except (ConnectionError, OSError) as exc:
                self._discard(connection)
                if reused and not connection.received and replayable and not fresh:
                    continue  # the edge closed an idle connection as we reused it: safe to repeat once
                raise EdgeError(Failure.PROTOCOL, f"edge connection failed: {exc or type(exc).__name__}") from None
            except BaseException:
                self._discard(connection)
                raise
            return EdgeResponse(connection, self, self.response_timeout, method == "HEAD")
        raise AssertionError("unreachable")  # the second try returns or raises

    async def _acquire(self, key: tuple[str, int, bool], fresh: bool) -> EdgeConnection:
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
                _, connection = await loop.create_connection(lambda: EdgeConnection(loop, key), host, port,
                                                             ssl=self._tls if secure else None)
        except TimeoutError:
            raise EdgeError(Failure.CONNECT, f"no connection to the edge within {self.connect_timeout}s") from None
        except OSError as exc:
            raise EdgeError(Failure.CONNECT, f"edge refused the connection: {exc.strerror or exc}") from None
        self._busy.add(connection)
        return connection

    def release(self, connection: EdgeConnection) -> None:
        """Keep the connection for the next request if its last exchange ended cleanly."""
        self._busy.discard(connection)
        connection.busy = False
        idle = self._idle.setdefault(connection.key, [])
        if not connection.complete or not connection.reusable or connection.closed or len(idle) >= MAX_IDLE_PER_EDGE:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def _discard(self, connection: EdgeConnection) -> None:
        self._busy.discard(connection)
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
