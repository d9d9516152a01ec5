"""The edge's connection to its origin: one httpx client, streaming, with clear failure kinds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h11
import httpx
from httpcore._async.http11 import AsyncHTTP11Connection


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
    """The origin could not give a response; `status` is what the client gets (502 or 504)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class OriginResponse:
    status: int
    raw_headers: list[tuple[bytes, bytes]]
    response: httpx.Response  # open stream; read with `chunks()`, always `close()`

    def chunks(self):  # type: ignore[no-untyped-def]
        return self.response.aiter_raw()

    async def close(self) -> None:
        await self.response.aclose()


class Origin:
    """Sends requests to the configured origin only; the client's target never picks the server."""

    def __init__(self, base_url: str, connect_timeout: float, response_timeout: float) -> None:
        self.base = httpx.URL(base_url)
        self.response_timeout = response_timeout
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(response_timeout, connect=connect_timeout),
            # Idle connections are dropped well before common server keep-alive timeouts (Node: 5 s),
            # so a request is rarely sent on a connection the server is closing.
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=2.0),
            follow_redirects=False,
            trust_env=False,
        )

    async def open(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None = None
    ) -> OriginResponse:
        """Send a request and return once the response headers arrived (the body is still to be read)."""
        try:
            url = self.base.copy_with(raw_path=target.encode("latin-1"))
        except (httpx.InvalidURL, UnicodeEncodeError) as exc:
            raise OriginError(400, f"bad request target: {exc}") from None
        # httpx.Request, not client.build_request: the client's default headers must not be added.
        request = httpx.Request(method, url, headers=headers, content=body)
        try:
            response = await self._send(request, retry=method in IDEMPOTENT_METHODS)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise OriginError(504, "origin did not answer in time") from None
        except httpx.ConnectError as exc:
            raise OriginError(502, f"origin refused the connection: {exc}") from None
        except (httpx.HTTPError, OSError) as exc:
            raise OriginError(502, f"origin answered badly: {exc.__class__.__name__}: {exc}") from None
        if not 100 <= response.status_code <= 599:  # RFC 9110 §15: three digits, first 1-5
            await response.aclose()
            raise OriginError(502, f"origin sent an invalid status code {response.status_code}")
        return OriginResponse(response.status_code, list(response.headers.raw), response)

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
