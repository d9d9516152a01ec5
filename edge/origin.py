"""The edge's HTTP client toward its origins and parents: one httpx client, streaming, with clear failure kinds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import h11
import httpx
from httpcore._async.http11 import AsyncHTTP11Connection

from balancer import Failure


def _never_reuse_after_trailing_bytes() -> None:
    """Close, rather than reuse, an origin connection that sent bytes past the end of a response.

    Such bytes mean the response's framing was wrong (a Content-Length shorter than the
    body); httpcore would parse them as the start of the next response on that connection,
    handing one client's request another answer: an edge/origin desync.
    """
    original = AsyncHTTP11Connection._response_closed
    if getattr(original, "_cdn_guard", False):
        return

    async def _response_closed(self: AsyncHTTP11Connection) -> None:
        state = self._h11_state
        if state.their_state is h11.DONE and state.trailing_data[0]:
            await self.aclose()
            return
        await original(self)

    _response_closed._cdn_guard = True  # type: ignore[attr-defined]
    AsyncHTTP11Connection._response_closed = _response_closed  # type: ignore[method-assign]


_never_reuse_after_trailing_bytes()
DISCONNECTED = "Server disconnected without sending a response"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


class OriginError(Exception):
    """No usable response from upstream; `status` is what the client gets (502, 503 or 504)."""

    def __init__(self, status: int, message: str, failure: Failure | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.failure = failure


@dataclass(slots=True)
class OriginResponse:
    status: int
    raw_headers: list[tuple[bytes, bytes]]
    response: httpx.Response  # open stream; read with `chunks()`, always `close()`
    on_close: Callable[[], None] | None = None
    served_by: str = ""  # the member's base URL

    def chunks(self) -> AsyncIterator[bytes]:
        return self.response.aiter_raw()

    async def close(self) -> None:
        try:
            await self.response.aclose()
        finally:
            if self.on_close is not None:
                self.on_close()
                self.on_close = None


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: the edge relays Set-Cookie to its client and never holds a cookie itself."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None  # httpx would parse every Set-Cookie of every response into a jar shared by all clients


class _ProxyClient(httpx.AsyncClient):
    """httpx's client with the jar that keeps nothing."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, value: object) -> None:
        pass


_NO_COOKIES = _NoCookies()


class HttpUpstream:
    """The edge's HTTP client: requests go only to the base URLs of configured members, never where a client points."""

    def __init__(self, connect_timeout: float, response_timeout: float) -> None:
        self.response_timeout = response_timeout
        self.client = _ProxyClient(
            timeout=httpx.Timeout(response_timeout, connect=connect_timeout),
            # Idle connections are dropped well before common server keep-alive timeouts (Node: 5 s),
            # so a request is rarely sent on a connection the server is closing.
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=2.0),
            follow_redirects=False,
            trust_env=False,
        )

    async def open(self, method: str, base: str, target: str, headers: list[tuple[str, str]],
                   body: bytes | None = None) -> OriginResponse:
        """Send a request to `base` + `target`; return once the response headers arrived (the body is still to come)."""
        try:
            url = httpx.URL(base).copy_with(raw_path=target.encode("latin-1"))
        except (httpx.InvalidURL, UnicodeEncodeError) as exc:
            raise OriginError(400, f"bad request target: {exc}") from None
        # httpx.Request, not client.build_request: the client's default headers must not be added.
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]  # obs-text survives (RFC 9110 §5.5)
        request = httpx.Request(method, url, headers=raw, content=body)
        try:
            response = await self._send(request, retry=method in IDEMPOTENT_METHODS)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise OriginError(502, f"origin refused the connection: {exc or exc.__class__.__name__}", Failure.CONNECT) from None
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise OriginError(504, "origin did not answer in time", Failure.TIMEOUT) from None
        except (httpx.HTTPError, OSError) as exc:
            raise OriginError(502, f"origin answered badly: {exc.__class__.__name__}: {exc}", Failure.PROTOCOL) from None
        if not 100 <= response.status_code <= 599:  # RFC 9110 §15: three digits, first 1-5
            await response.aclose()
            raise OriginError(502, f"origin sent an invalid status code {response.status_code}", Failure.PROTOCOL)
        return OriginResponse(response.status_code, list(response.headers.raw), response, served_by=base)

    async def _send(self, request: httpx.Request, retry: bool) -> httpx.Response:
        try:
            return await asyncio.wait_for(self.client.send(request, stream=True), self.response_timeout)
        except httpx.RemoteProtocolError as exc:
            # A kept-alive connection closed by the server as we reused it: safe to repeat once
            # for an idempotent method (RFC 9110 §9.2.2). Any other protocol error is the answer.
            if not retry or DISCONNECTED not in str(exc):
                raise
            return await asyncio.wait_for(self.client.send(request, stream=True), self.response_timeout)

    async def aclose(self) -> None:
        await self.client.aclose()
