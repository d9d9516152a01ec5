"""The edge's HTTP client toward its origins and parents: keep-alive, streaming, with clear failure kinds.

It is `balancer.http_client`, the front door's client too, with what the edge adds:
the Host and Content-Length fields, and failures as the status a client gets.
It keeps no cookies: Set-Cookie is relayed to the client, never held.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

from balancer import Failure
from balancer.http_client import BadRequestHead, HttpClient, Response, UpstreamError

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# What a client gets when no usable response came: a gateway error, or a timeout.
FAILURE_STATUS = {Failure.CONNECT: 502, Failure.PROTOCOL: 502, Failure.TIMEOUT: 504}
BODY_ERRORS = (UpstreamError, OSError)  # a response body cut short, malformed, or stalled


class OriginError(Exception):
    """No usable response from upstream; `status` is what the client gets (400, 502, 503 or 504)."""

    def __init__(self, status: int, message: str, failure: Failure | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.failure = failure


@dataclass(slots=True)
class OriginResponse:
    status: int
    raw_headers: list[tuple[bytes, bytes]]  # names in lower case
    response: Response  # open stream; read with `chunks()` (BODY_ERRORS), always `close()`
    on_close: Callable[[], None] | None = None
    served_by: str = ""  # the member's base URL

    def chunks(self) -> AsyncIterator[bytes]:
        return self.response.chunks()

    async def close(self) -> None:
        try:
            await self.response.close()
        finally:
            if self.on_close is not None:
                self.on_close()
                self.on_close = None


@lru_cache(maxsize=256)
def member_fields(base: str) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes] | None]:
    """The Host field for a request to `base` (its host, and its port unless the scheme's default),
    and Authorization when the URL carries credentials (`http://user:password@origin`), as httpx sent them."""
    parts = urlsplit(base)
    host = (parts.hostname or "").encode("idna")
    if b":" in host:
        host = b"[" + host.partition(b"%")[0] + b"]"  # an IPv6 literal, without a zone (RFC 6874 §2)
    default = 443 if parts.scheme == "https" else 80
    if parts.port is not None and parts.port != default:
        host += b":%d" % parts.port
    auth = None
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = (b"authorization", b"Basic " + base64.b64encode(secret))
    return (b"host", host), auth


class HttpUpstream:
    """The edge's HTTP client: requests go only to the base URLs of configured members, never where a client points."""

    def __init__(self, connect_timeout: float, response_timeout: float) -> None:
        self.client = HttpClient(connect_timeout, response_timeout, peer="origin")

    async def open(self, method: str, base: str, target: str, headers: list[tuple[str, str]],
                   body: bytes | None = None) -> OriginResponse:
        """Send a request to `base` + `target`; return once the response headers arrived (the body is still to come)."""
        try:
            fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]  # obs-text survives (RFC 9110 §5.5)
        except UnicodeEncodeError as exc:
            raise OriginError(400, f"a request field cannot be sent: {exc}") from None
        host, auth = member_fields(base)
        if not any(k == "host" for k, _ in headers):
            fields.append(host)
        if auth is not None:  # the configured credentials, not the client's
            fields = [field for field in fields if field[0] != b"authorization"] + [auth]
        if body or (body is not None and method in BODY_METHODS):
            # RFC 9110 §8.6: a length for content the method means to carry, even none.
            fields.append((b"content-length", b"%d" % len(body)))
        try:
            response = await self.client.open(method, base, target, fields, body,
                                               replayable=method in IDEMPOTENT_METHODS)
        except BadRequestHead as exc:
            raise OriginError(400, f"bad request: {exc}") from None
        except UpstreamError as exc:
            raise OriginError(FAILURE_STATUS[exc.failure], exc.message, exc.failure) from None
        return OriginResponse(response.status, response.raw_headers, response, served_by=base)

    async def aclose(self) -> None:
        await self.client.aclose()
