"""A bare ASGI app that serves cacheable bodies of an exact size from memory: `GET /bytes/<n>`.

The benchmarks use it twice: as the origin behind the edge, and as the baseline
(the least work uvicorn can do to answer with the same bytes). The query string
is ignored, so `?bust=<i>` makes a unique cache key for the same body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from functools import lru_cache
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PREFIX = "/bytes/"
MAX_SIZE = 16 * 1024 * 1024
CACHE_CONTROL = b"public, max-age=3600"


def path_for(size: int) -> str:
    """The URL path of the body of `size` bytes."""
    return f"{PREFIX}{size}"


@lru_cache(maxsize=64)
def response_for(path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, header fields and body for `path`, built once per path."""
    size = path.removeprefix(PREFIX)
    if not path.startswith(PREFIX) or not size.isdigit() or int(size) > MAX_SIZE:
        return 404, [(b"content-type", b"text/plain"), (b"content-length", b"10")], b"not found\n"
    body = b"x" * int(size)
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", CACHE_CONTROL)]
    return 200, headers, body


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every HTTP request from memory; other scopes (lifespan) are not used."""
    if scope["type"] != "http":
        return
    status, headers, body = response_for(scope["path"])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
