"""The HTTP/1.1 server under every service: uvicorn's httptools protocol with the limits it lacks, and logging
that never blocks the event loop.

uvicorn (0.54) has no deadline before or within a request (its keep-alive timeout only runs after a
response), buffers a request head of any size before the application sees it, accepts HTTP/0.9-form
and `HTTP/2.0` request lines, and appends chunked trailer fields to the request's header fields.
`HttpProtocol` adds, per connection:

    request head    -> whole within `header_timeout` (else 408, or a quiet close if nothing came),
                       at most `MAX_HEAD_BYTES` (else 431), target at most `MAX_TARGET_BYTES` (else 414),
                       HTTP/1.0 or HTTP/1.1 (else 400)
    request body    -> no pause longer than `body_timeout` while the server is reading it (else 408)
    trailer fields  -> dropped, never merged into the header fields (RFC 9110 §6.5.1)
    Upgrade         -> not performed: the request is served as plain HTTP and the connection closed after it
                       (with a body, which the parser would take for the next request: 400)
    response head   -> what one turn of the event loop writes goes out in one system call
                       (`CoalescingTransport`); fields the app marks as checked (`CHECKED_FIELDS`, the
                       edge's hits) are written without uvicorn checking each one again (`ResponseCycle`)
    answers now     -> an app with an `answer_now` method (the edge: its fresh hits) answers a
                       request without a body while the server parses it, with no task, cycle or
                       ASGI message, when no earlier response is still being written (`HttpProtocol.answer`)

`answer_now(method, target, fields, scope)` gets the request's method and target as they came (bytes;
not used when the server has a `root_path`, which the target does not hold),
its header fields as uvicorn gives them to the app (names in lower case), and `scope`, a function that
makes the request's scope as far as its head goes (no `state`, no `asgi`) for an app that needs more.
It returns None (the app is called as usual) or `(status, lines, body)`: `lines` the response's
header fields as written ("name: value\r\n" each), every one lower-case and passing
`fields_checked` but for a Content-Length, which they hold (for HEAD, the length a GET would
get), and `body` bytes or a `BodyFile`, which the server sends from its file with sendfile(2) when
nothing else is waiting to be written on the connection. The server adds its default fields and,
when the connection ends, `connection: close`. `answer_now` is
looked up on the app uvicorn runs, so middleware hides it (the services run none), and not used
under uvicorn's concurrency limit, which counts tasks. uvicorn's own access log (which the services
run off: the edge logs its requests itself) does not see what is answered now.

`queued_log_config` is uvicorn's logging configuration with every handler writing from a thread of
its own through a bounded queue, so a stderr nobody reads (a pipe, a stalled log shipper) costs
dropped lines, never a stalled event loop.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import logging.handlers
import os
import queue
import socket
import sys
import time
import types
import urllib.parse
import weakref
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import httptools
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

MAX_TARGET_BYTES = 65535  # the longest target httptools.parse_url takes: longer ones get 414, not its 400
MAX_HEAD_BYTES = 128 * 1024  # far above the edge's shield limits (8 KiB target, 32 KiB fields), which answer first
LOG_BACKLOG = 1000  # log records waiting to be written before new ones are dropped


@dataclass(frozen=True)
class ClientLimits:
    """How long a client may take to send its request."""

    header_timeout: float = 15.0  # seconds from the request's first byte (or the connection) to its blank line
    body_timeout: float = 60.0  # seconds a body may pause while the server waits for it

    @classmethod
    def of(cls, settings: object | None) -> ClientLimits:
        """The limits a service's settings set (`client_header_timeout`, `client_body_timeout`); defaults otherwise."""
        return cls(header_timeout=getattr(settings, "client_header_timeout", cls.header_timeout),
                   body_timeout=getattr(settings, "client_body_timeout", cls.body_timeout))


# What the connection is reading (module constants rather than an Enum: checked several times per request).
IDLE = 0  # between requests: no byte of the next one yet (uvicorn's keep-alive timeout applies)
HEAD = 1
BODY = 2


class Refused(Exception):
    """Raised from `on_headers_complete` to stop the parser; the protocol answers `status` and closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyFile:
    """A response body held also in an in-memory file (memfd), which the server sends with sendfile(2):
    the kernel hands the file's pages to the socket, where writing `data` copies it there first (which
    costs more for large bodies: the README says from what size). The file is closed when the object
    goes; pages still on their way to a client stay until sent. OSError: no file could be made."""

    __slots__ = ("data", "fd")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fd = -1  # for `close`, should memfd_create fail
        self.fd = os.memfd_create("cdn-body", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    __del__ = close


class CoalescingTransport:
    """A transport that sends what is written in one turn of the event loop with one system call.

    uvicorn writes a response's head and its body separately, and uvloop sends each at once: two
    system calls and two TCP segments for a small response. Held until the turn ends, they go out
    together (one writev). Once `FLUSH_AT` bytes are held they go at once, so the real transport's
    write buffer, and with it uvicorn's flow control, sees a large body as before. Closing sends
    what is held first. Everything else is the real transport's.
    """

    __slots__ = ("_transport", "_loop", "_pending", "_held", "_socket")

    FLUSH_AT = 64 * 1024

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._held = 0
        # The socket `send_file` writes to itself: a plain TCP one (no TLS on top), else none (-1).
        sock = transport.get_extra_info("socket")
        plain = sock is not None and sock.type == socket.SOCK_STREAM and transport.get_extra_info("sslcontext") is None
        self._socket = sock.fileno() if plain else -1

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._held += len(data)
        if self._held >= self.FLUSH_AT:
            self.flush()

    def writelines(self, data: Iterable[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def write_through(self, *pieces: bytes) -> None:
        """Write `pieces` (a whole response) at once, after what is held, in one system call."""
        if self._pending:
            self.writelines(pieces)
        elif not self._transport.is_closing():
            if len(pieces) == 1:
                self._transport.write(pieces[0])
            else:
                self._transport.writelines(pieces)

    def send_file(self, head: bytes, body: BodyFile) -> None:
        """`write_through(head, body.data)`, but the body sent from its file with sendfile(2) when nothing is
        waiting to go before it, here or in the real transport. What the socket does not take at once is
        left to the real transport, as any write is."""
        fd = self._socket
        transport = self._transport
        if fd < 0 or self._pending or transport.get_write_buffer_size() or transport.is_closing():
            self.write_through(head, body.data)
            return
        try:
            written = os.write(fd, head)
        except OSError:  # the socket takes nothing now (or is broken, which the transport finds out)
            written = 0
        if written < len(head):
            transport.writelines([head[written:], body.data])
            return
        try:
            sent = os.sendfile(fd, body.fd, 0, len(body.data))
        except OSError:
            sent = 0
        if sent < len(body.data):
            transport.write(memoryview(body.data)[sent:])

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending, self._held = [], 0
        if self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending, self._held = [], 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# An ASGI `http.response.start` key this server understands: the body's length, from an app whose
# header fields passed `fields_checked` (but for their Content-Length, which they hold). Other servers
# ignore it.
CHECKED_FIELDS = "cdn.checked_fields"
FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection"})  # uvicorn acts on these
JOIN_BODY_BELOW = 16 * 1024  # bodies an answer copies into one buffer with its head; larger ones are written beside it
BODY_FIELDS = frozenset({b"content-length", b"transfer-encoding"})  # a request with either may have a body


def fields_checked(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether `fields` may go out unchecked under CHECKED_FIELDS: they pass uvicorn's checks (lower-case
    names without separators, values without control characters but tab) and none of them frames the message."""
    return all(name == name.lower() and not HEADER_RE.search(name) and not HEADER_VALUE_RE.search(value)
               and name not in FRAMING_FIELDS for name, value in fields)


class _Done:
    """An awaitable that is done at once (what `ResponseCycle.send` returns once it has written)."""

    def __await__(self) -> Iterator[None]:
        return iter(())


DONE = _Done()


class ResponseCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing a head whose fields the app has checked (CHECKED_FIELDS)
    without checking them again: uvicorn runs two regular expressions and four comparisons on each
    field, which for a cache hit's eight fields cost a sixth of the whole request (callgrind)."""

    def send(self, message: Any) -> Awaitable[None]:  # type: ignore[override]
        # Not a coroutine of its own: every other message goes to uvicorn's `send` without another frame.
        length = message.get(CHECKED_FIELDS)
        if length is None or self.response_started or self.disconnected or self.flow.write_paused or self.access_log:
            return RequestResponseCycle.send(self, message)
        self.response_started = True
        self.waiting_for_100_continue = False
        self.chunked_encoding = False
        self.expected_content_length = length
        lines: list[bytes] = []
        for name, value in message["headers"]:
            lines += (name, b": ", value, b"\r\n")
        self.transport.write(b"".join(checked_head(message["status"], self.default_headers, lines, self.keep_alive)))
        return DONE


def checked_head(status: int, default_fields: list[tuple[bytes, bytes]], lines: list[bytes],
                 keep_alive: bool) -> list[bytes]:
    """The pieces of a response head whose field `lines` passed `fields_checked` (but for their Content-Length),
    as uvicorn writes it: the server's default fields first, `connection: close` last when the connection ends."""
    content = [STATUS_LINE[status]]
    for name, value in default_fields:
        content += (name, b": ", value, b"\r\n")
    content += lines
    if not keep_alive:
        content.append(b"connection: close\r\n")
    content.append(b"\r\n")
    return content


# uvicorn's `on_headers_complete`, making a ResponseCycle where uvicorn's makes a RequestResponseCycle.
_uvicorn_on_headers_complete = types.FunctionType(HttpToolsProtocol.on_headers_complete.__code__,
                                                  {**vars(httptools_impl), "RequestResponseCycle": ResponseCycle})


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines, head size limits, strict versions and trailers dropped,
    answering what its app's `answer_now` answers while it parses.

    A request whose head arrives in one read arms no timer: the head deadline is set only when a read
    ends inside a head, the body deadline only when one ends inside a body."""

    limits = ClientLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading = IDLE
        self.head_bytes = 0  # bytes of the current head past the read it began in
        self.after_body = 0  # bytes read in the body phase since the last body bytes: chunk framing, trailers
        self.body_moved = False
        self.body_activity = 0.0  # loop time the body phase last received bytes
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.refusal: Refused | None = None
        # (method, target, fields, scope) -> (status, checked field lines with Content-Length, body) or None; not
        # under a concurrency limit, which uvicorn enforces per task, nor behind middleware (uvicorn's trace
        # logging), nor under a root_path, which the target it is given does not hold
        self.answer_now = (getattr(self.app, "answer_now", None)
                           if self.limit_concurrency is None and not self.root_path else None)
        self.answered = False  # the message being parsed was answered by `answer`
        self.answered_at = 0.0  # loop time of the last answer
        self.keep_alive_lazy = False  # the keep-alive timer is `answer`'s, checked when it fires, not cancelled per read

    # -- connection ------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        # A client that connects and sends nothing has as long as one that sends half a head.
        self.head_timer = self.loop.call_later(self.limits.header_timeout, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timers()
        self._unset_keepalive_if_required()  # uvicorn leaves it armed when the connection was lost to an error
        super().connection_lost(exc)

    def cancel_timers(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def data_received(self, data: bytes) -> None:
        if not self.keep_alive_lazy:
            self._unset_keepalive_if_required()
        before = self.reading
        self.body_moved = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades are not performed (no WebSocket protocol is configured): the request is answered
            # as plain HTTP, and the connection closes after it (see `on_headers_complete`).
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            return
        except httptools.HttpParserError:
            refusal, self.refusal = self.refusal, None
            if refusal is None:
                self.logger.warning("Invalid HTTP request received.")
                refusal = Refused(400, "Invalid HTTP request received.")
            self.refuse(refusal.status, refusal.message)
            return
        reading = self.reading
        if reading == HEAD:
            if len(self.url) > MAX_TARGET_BYTES:
                self.refuse(414, f"request target longer than {MAX_TARGET_BYTES} bytes")
                return
            if before == HEAD:  # the read a head began in is not counted: it may overrun by one read
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD_BYTES:
                    self.refuse(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
                    return
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(self.limits.header_timeout, self.head_timed_out)
        elif reading == BODY:
            self.body_activity = self.loop.time()
            if before == BODY:
                # Bytes that carry no body: chunk framing and trailer fields, which the parser buffers.
                self.after_body = 0 if self.body_moved else self.after_body + len(data)
                if self.after_body > MAX_HEAD_BYTES:
                    self.refuse(431, f"trailer section larger than {MAX_HEAD_BYTES} bytes")
                    return
            if self.body_timer is None:
                self.body_timer = self.loop.call_later(self.limits.body_timeout, self.body_timed_out)
        elif (self.head_timer is None and self.timeout_keep_alive_task is None and not self.pipeline
              and (self.cycle is None or self.cycle.response_complete)):
            # Only empty lines came (RFC 9112 §2.2 lets them precede a request): they buy no more time.
            self.head_timer = self.loop.call_later(self.limits.header_timeout, self.head_timed_out)

    # -- parser callbacks ------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.answer_now is None:
            super().on_message_begin()
        else:  # uvicorn's, but for the scope, made once the head is complete and not answered now (`make_scope`)
            self.url = b""
            self.expect_100_continue = False
            self.headers = []
        self.reading = HEAD
        self.head_bytes = 0

    def make_scope(self) -> None:
        """The request's scope, made by uvicorn's `on_message_begin` for the head parsed since it began."""
        url, headers, expect_100_continue = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.expect_100_continue = url, expect_100_continue
        self.headers = self.scope["headers"] = headers

    def on_headers_complete(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if len(self.url) > MAX_TARGET_BYTES:
            self.refusal = Refused(414, f"request target longer than {MAX_TARGET_BYTES} bytes")
            raise self.refusal
        version = self.parser.get_http_version()
        if version != "1.1" and version != "1.0":
            # HTTP/0.9-form request lines (no version) and HTTP/2.0 in an HTTP/1 request line (RFC 9112 §2.3, §3)
            self.refusal = Refused(400, f"HTTP/{version} requests are not served")
            raise self.refusal
        upgrade = self.parser.should_upgrade()
        if self.answer_now is not None:
            if not upgrade and self.answer(version):
                return
            self.make_scope()
        if upgrade and self._should_upgrade():
            super().on_headers_complete()  # a WebSocket protocol is configured: uvicorn hands the connection over
            return
        if upgrade and any(name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
                           for name, value in self.headers):
            # The parser does not read the body of a request asking for an upgrade or a tunnel
            # (Connection: upgrade, CONNECT): its bytes would be taken for the next request.
            self.refusal = Refused(400, "a request asking for an upgrade or a tunnel may not carry a body")
            raise self.refusal
        _uvicorn_on_headers_complete(self)
        self.reading = BODY
        self.after_body = 0
        # Trailer fields arrive through `on_header` too, which appends to `self.headers`: that list is the
        # scope's, so from here on it gets one of its own and they are dropped (RFC 9110 §6.5.1: never merged).
        self.headers = []
        if upgrade:
            self.cycle.keep_alive = False  # bytes after an upgrade request are never parsed: close after the answer

    def on_body(self, body: bytes) -> None:
        self.body_moved = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.reading = IDLE
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if self.answered:
            self.answered = False
            return
        super().on_message_complete()

    # -- answering now ---------------------------------------------------------
    def answer(self, version: str) -> bool:
        """Answer the request whose head is complete with `answer_now`, if it has no body, nothing is
        before it (a response being produced or written, a pipelined request waiting) and the client is
        reading what it is sent. Done as uvicorn's cycle ends a response: the request counted, the
        connection closed or its keep-alive timer armed. False: it goes to the app."""
        if self.answering() or self.flow.write_paused or self.transport.is_closing():
            return False
        headers = self.headers
        for name, _ in headers:
            if name in BODY_FIELDS:
                return False
        method = self.parser.get_method()
        try:
            answer = self.answer_now(method, self.url, headers, self.answer_scope)
        except Exception:  # the app's fault, not the request's (a 400): logged, and the app called as usual
            self.logger.exception("Exception in answer_now")
            return False
        if answer is None:
            return False
        status, lines, body = answer
        keep_alive = version != "1.0" and self.parser.should_keep_alive()
        head = checked_head(status, self.server_state.default_headers, [lines], keep_alive)
        if method == b"HEAD":
            self.transport.write_through(b"".join(head))
        elif type(body) is BodyFile:
            self.transport.send_file(b"".join(head), body)
        elif len(body) <= JOIN_BODY_BELOW:
            head.append(body)
            self.transport.write_through(b"".join(head))
        else:  # a large body is not copied into the head's buffer: the two go out together all the same (writev)
            self.transport.write_through(b"".join(head), body)
        self.answered = True
        self.server_state.total_requests += 1
        if not keep_alive:
            self.transport.close()
            return True
        # Not a timer per answer (arming and cancelling one costs more than the rest of the answer's bookkeeping):
        # one, armed while none is, that looks when it fires at how long the connection has been idle.
        self.answered_at = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.keep_alive_expired)
            self.keep_alive_lazy = True
        return True

    def answer_scope(self) -> dict[str, Any]:
        """The scope of the request being answered now, as far as its head goes: what uvicorn would give
        the app for it (no `state`, no `asgi`). `answer_now` asks for it only when it needs more than the
        method, target and fields it is given."""
        path = (url := httptools.parse_url(self.url)).path.decode("ascii")
        return {"type": "http", "http_version": self.parser.get_http_version(), "server": self.server,
                "client": self.client, "scheme": self.scheme, "method": self.parser.get_method().decode("ascii"),
                "path": urllib.parse.unquote(path) if "%" in path else path, "raw_path": url.path,
                "query_string": url.query or b"", "root_path": "", "headers": self.headers}

    def keep_alive_expired(self) -> None:
        """`answer`'s keep-alive timer: uvicorn's timeout, from the last answer, for a connection idle since."""
        self.timeout_keep_alive_task = None
        self.keep_alive_lazy = False
        if self.reading != IDLE or self.answering():
            return  # a head is being read (it has a deadline of its own) or answered (uvicorn arms its timer after)
        idle = self.loop.time() - self.answered_at
        if idle < self.timeout_keep_alive:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive - idle, self.keep_alive_expired)
            self.keep_alive_lazy = True
        else:
            self.timeout_keep_alive_handler()

    def _unset_keepalive_if_required(self) -> None:  # uvicorn's, and the timer is no longer `answer`'s
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
            self.keep_alive_lazy = False

    # -- deadlines -------------------------------------------------------------
    def answering(self) -> bool:
        """A response to an earlier request is still being produced or written."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or self.reading == BODY:
            return
        if self.answering():  # the client is waiting for us, not we for it: start its time again
            self.head_timer = self.loop.call_later(self.limits.header_timeout, self.head_timed_out)
        elif self.reading == IDLE:
            self.transport.close()  # nothing of a request came: close quietly, as after an idle keep-alive
        else:
            self.refuse(408, f"request head not received within {self.limits.header_timeout:g} s")

    def body_timed_out(self) -> None:
        self.body_timer = None
        if self.transport.is_closing() or self.reading != BODY:
            return
        idle = self.loop.time() - self.body_activity
        ours = self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue)
        if ours:
            # Reading is paused (the application has not taken what it has, or answers a pipelined request
            # first), or the client waits for our 100 Continue: it cannot send, so its pause starts anew
            # when we stop blocking it, which is seen within an eighth of the timeout.
            self.body_activity = self.loop.time()
            self.body_timer = self.loop.call_later(self.limits.body_timeout / 8, self.body_timed_out)
            return
        if idle < self.limits.body_timeout:
            self.body_timer = self.loop.call_later(self.limits.body_timeout - idle, self.body_timed_out)
            return
        self.refuse(408, f"request body paused for more than {self.limits.body_timeout:g} s")

    # -- refusing --------------------------------------------------------------
    def refuse(self, status: int, message: str) -> None:
        """Answer `status` with `message` and close; when the answer cannot be sent any more, just close."""
        self.cancel_timers()
        cycle = self.cycle
        reading_request = self.reading == BODY and cycle is not None and not self.pipeline
        if reading_request:
            # The application may be waiting for the body: it gets http.disconnect and sends nothing.
            can_answer = not cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
        else:
            can_answer = not self.answering()
        if can_answer and not self.transport.is_closing():
            body = message.encode("ascii", "replace")
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend([b"content-type: text/plain; charset=utf-8\r\n",
                            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                            b"connection: close\r\n\r\n", body])
            self.transport.write(b"".join(content))
        self.transport.close()


def protocol_class(limits: ClientLimits) -> type[HttpProtocol]:
    """`HttpProtocol` with `limits`, for uvicorn's `http=` (it makes one instance per connection)."""
    return type("HttpProtocol", (HttpProtocol,), {"limits": limits})


# -- logging ---------------------------------------------------------------------------------


class _LineWriter:
    """Where the writer thread puts each (already formatted) record: a line on `stream`.

    Not a logging.Handler, so logging's shutdown never waits for its lock while a write is stuck."""

    level = logging.NOTSET

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def handle(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(record.getMessage() + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: the line is lost
            pass


_queued_handlers: weakref.WeakSet[QueuedStreamHandler] = weakref.WeakSet()


class QueuedStreamHandler(logging.handlers.QueueHandler):
    """Formats on the caller's thread and writes to `stream` from a thread of its own.

    The queue holds at most `backlog` records; while it is full, new ones are dropped and counted
    in `dropped`, so logging from the event loop never waits for the stream."""

    def __init__(self, stream: TextIO | None = None, backlog: int = LOG_BACKLOG) -> None:
        super().__init__(queue.Queue(backlog))
        self.dropped = 0
        self.listener = logging.handlers.QueueListener(self.queue, _LineWriter(stream or sys.stderr))
        self.listener.start()  # a daemon thread: never joined, so a stuck stream cannot hold up exit
        _queued_handlers.add(self)

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def flush(self) -> None:
        """Wait until the queued records are written, at most a second (the stream may be stuck); run at exit."""
        deadline = time.monotonic() + 1.0
        while self.queue.unfinished_tasks and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.005)


def dropped_log_records() -> int:
    """Log records this process dropped because their stream could not keep up."""
    return sum(h.dropped for h in list(_queued_handlers))


def queued_log_config(level: str = "warning") -> dict[str, Any]:
    """uvicorn's logging configuration with each handler a `QueuedStreamHandler`, and the root logger
    (the services' own loggers, e.g. `cdn.edge`) on one too, at `level`, instead of Python's
    last-resort handler, which writes to stderr synchronously."""
    config = copy.deepcopy(LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["()"] = QueuedStreamHandler
        del handler["class"]
    config["formatters"]["service"] = {"()": "uvicorn.logging.DefaultFormatter",
                                       "fmt": "%(levelprefix)s %(name)s: %(message)s", "use_colors": None}
    config["handlers"]["service"] = {"()": QueuedStreamHandler, "formatter": "service", "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["service"], "level": level.upper()}
    return config

