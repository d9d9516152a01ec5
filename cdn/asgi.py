"""Small pieces every raw-ASGI service of the project shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def run_lifespan(receive: Receive, send: Send, start: Callable[[], Awaitable[None]],
                       stop: Callable[[], Awaitable[None]]) -> None:
    """Answer the ASGI lifespan protocol: `start` at start-up, `stop` at shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
