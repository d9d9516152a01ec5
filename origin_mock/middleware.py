"""ASGI middleware of the origin mock: request accounting, and the I/O half of fault injection.

The shop's own routes (/api, /static) are counted and may be faulted; the control
routes (/_origin, /healthz) are neither, so watching the origin does not change
what it measures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from origin_mock.faults import Fault, FaultPolicy
from origin_mock.stats import RequestStats

Sleep = Callable[[float], Awaitable[object]]


def is_control_path(path: str) -> bool:
    """Whether a path belongs to the mock's control surface rather than to the shop."""
    return path == "/healthz" or path == "/_origin" or path.startswith("/_origin/")


def is_faultable_path(path: str) -> bool:
    """Whether latency and faults apply to a path (the catalog API and static assets)."""
    return path.startswith(("/api/", "/static/")) or path in ("/api", "/static")


class Accounting:
    """Counts every shop request in `RequestStats`: arrival, status, body bytes, in-flight."""

    def __init__(self, app: ASGIApp, stats: RequestStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_control_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        stats = self.stats
        method = scope["method"]
        stats.request(method, scope["path"])
        # HEAD bodies are dropped by the server, so they are never sent.
        count_body = method != "HEAD"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                stats.status(message["status"])
            elif message["type"] == "http.response.body" and count_body:
                stats.bytes_sent += len(message.get("body", b""))
            await send(message)

        stats.in_flight += 1
        try:
            await self.app(scope, receive, counting_send)
        finally:
            stats.in_flight -= 1


async def run_until_disconnect(receive: Receive, work: Callable[[], Awaitable[object]]) -> list[Message] | None:
    """Run `work` while watching for the client to leave; the request messages read meanwhile, or None if it left."""
    received: list[Message] = []
    finished = False
    async with anyio.create_task_group() as tasks:

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    tasks.cancel_scope.cancel()
                    return
                received.append(message)

        tasks.start_soon(watch)
        await work()
        finished = True
        tasks.cancel_scope.cancel()
    return received if finished else None


class FaultInjection:
    """Delays shop responses and breaks some of them, as `FaultPolicy` decides."""

    def __init__(self, app: ASGIApp, policy: FaultPolicy, stats: RequestStats, sleep: Sleep = asyncio.sleep) -> None:
        self.app = app
        self.policy = policy
        self.stats = stats
        self.sleep = sleep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = self.policy
        if scope["type"] != "http" or not policy.active or not is_faultable_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        delay = policy.delay_seconds()
        if delay > 0:
            await self.sleep(delay)
        fault = policy.choose()
        if fault is Fault.NONE:
            await self.app(scope, receive, send)
            return
        self.stats.fault(fault.value)
        if fault is Fault.ERROR:
            await self._error(send)
        elif fault is Fault.HANG:
            await self._hang(scope, receive, send)
        else:
            start, body = await self._capture(scope, receive)
            await send(start)
            if fault is Fault.CUTOFF:
                # Headers promised the whole body; returning now makes the server drop the connection.
                await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            else:
                await run_until_disconnect(receive, lambda: self._trickle(body, send))

    async def _error(self, send: Send) -> None:
        status = self.policy.error_status()
        body = b'{"error":"injected fault"}'
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _hang(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Hang until the client leaves (the task then ends) or hang_seconds pass (then answer late).
        received = await run_until_disconnect(receive, lambda: self.sleep(self.policy.settings.hang_seconds))
        if received is None:
            return

        async def replay() -> Message:
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)

    async def _capture(self, scope: Scope, receive: Receive) -> tuple[Message, bytes]:
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        return start, b"".join(chunks)

    async def _trickle(self, body: bytes, send: Send) -> None:
        rate = self.policy.settings.slow_body_bytes_per_second
        chunk = max(1, rate // 10)  # about ten writes a second
        for offset in range(0, len(body), chunk):
            piece = body[offset : offset + chunk]
            await self.sleep(len(piece) / rate)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
