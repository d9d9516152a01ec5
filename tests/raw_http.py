"""Raw HTTP/1.1 over a loopback socket: send exactly the bytes a test wrote, read back what the server answered.

Requests are written by hand (they are meant to be malformed); responses are parsed with h11, so a
server answering with something that is not HTTP shows up as a parse error, not as a silent pass.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field

import h11


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lowercase names; repeated fields joined with ", "
    body: bytes


@dataclass
class Exchange:
    responses: list[RawResponse] = field(default_factory=list)
    closed: bool = False  # the server closed the connection (EOF or reset) before the read ended
    raw: bytes = b""
    error: str | None = None  # what h11 could not parse, if anything

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    @property
    def status(self) -> int | None:
        return self.responses[0].status if self.responses else None


class ResponseReader:
    """Parses the server's side of a connection: one response per request the test says it sent."""

    def __init__(self, methods: list[str]) -> None:
        self.methods = list(methods)
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=256 * 1024)
        self.responses: list[RawResponse] = []
        self.error: str | None = None
        self._current: RawResponse | None = None
        self._announce()

    def _announce(self) -> None:
        # h11 only reads a response after "sending" its request: tell it which one (HEAD has no body).
        method = self.methods[len(self.responses)] if len(self.responses) < len(self.methods) else "GET"
        self.conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        self.conn.send(h11.EndOfMessage())

    @property
    def done(self) -> bool:
        return self.error is not None or len(self.responses) >= len(self.methods)

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.conn.receive_data(data)
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    if event is h11.PAUSED and self._restart():
                        continue
                    return
                if isinstance(event, h11.Response):
                    headers: dict[str, str] = {}
                    for name, value in event.headers:
                        key = name.decode("latin-1").lower()
                        text = value.decode("latin-1")
                        headers[key] = f"{headers[key]}, {text}" if key in headers else text
                    self._current = RawResponse(event.status_code, headers, b"")
                elif isinstance(event, h11.Data) and self._current is not None:
                    self._current.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage) and self._current is not None:
                    self.responses.append(self._current)
                    self._current = None
        except h11.RemoteProtocolError as exc:
            self.error = f"{exc.__class__.__name__}: {exc}"

    def _restart(self) -> bool:
        if self.done or self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
            return False
        self.conn.start_next_cycle()
        self._announce()
        return True


def exchange(port: int, data: bytes, methods: list[str] | None = None, timeout: float = 5.0) -> Exchange:
    """Send `data`, then read until one response per entry of `methods` (default one GET) arrived,
    the server closed the connection, or `timeout` passed."""
    reader = ResponseReader(methods or ["GET"])
    result = Exchange()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            result.closed = True  # refused while we were still sending: read what it said, if anything
        deadline = time.monotonic() + timeout
        while not reader.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                result.closed = True
                break
            result.raw += chunk
            reader.feed(chunk)
    result.responses = reader.responses
    result.error = reader.error
    return result


def request(method: str = "GET", target: str = "/", host: str | None = "shop.example",
            headers: list[tuple[str, str]] | list[bytes] = (), body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """A request as bytes, written exactly as given: header pairs, or whole raw lines (bytes) for malformed ones."""
    lines = [f"{method} {target} {version}".encode("latin-1")]
    if host is not None:
        lines.append(b"Host: " + host.encode("latin-1"))
    for header in headers:
        lines.append(header if isinstance(header, bytes) else f"{header[0]}: {header[1]}".encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def stream_until_answered(port: int, head: bytes, filler: bytes, limit: int, timeout: float = 5.0) -> tuple[bool, int]:
    """Send `head`, then `filler` again and again (a request head that never ends) up to `limit` bytes.

    Returns (whether the server answered, closed, or stopped reading before the limit, bytes of filler sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        sent = 0
        while sent < limit:
            try:
                sock.sendall(filler)
            except (BrokenPipeError, ConnectionResetError):
                return True, sent
            except socket.timeout:
                return True, sent  # the server stopped reading: its buffers hold no more of it
            sent += len(filler)
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                return True, sent
        readable, _, _ = select.select([sock], [], [], 0.5)
        return bool(readable), sent
