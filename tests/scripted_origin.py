"""An origin whose every answer the test decides: a raw ASGI app with per-path handlers and request records."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Headers = list[tuple[str, str]]


@dataclass
class Answer:
    status: int = 200
    headers: Headers = field(default_factory=list)
    body: bytes | list[bytes] = b"hello"  # a list streams chunk by chunk
    delay: float = 0.0  # before the response starts
    chunk_delay: float = 0.0  # between streamed chunks
    cut_after_first_chunk: bool = False  # announce the full length, then break the connection


Handler = Callable[[dict[str, str]], Answer]


class ScriptedOrigin:
    def __init__(self) -> None:
        self.handlers: dict[str, Handler | Answer] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path?query, headers

    def route(self, target: str, answer: Handler | Answer) -> None:
        self.handlers[target] = answer

    def last_headers(self) -> dict[str, str]:
        return self.requests[-1][2]

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        target = scope["path"] + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")  # field values may carry obs-text (RFC 9110 §5.5)
            headers[name] = headers[name] + ", " + value if name in headers else value
        while (await receive()).get("more_body"):
            pass
        self.hits[scope["path"]] += 1
        self.requests.append((scope["method"], target, headers))
        handler = self.handlers.get(target) or self.handlers.get(scope["path"]) or Answer(404, body=b"not found")
        answer = handler(headers) if callable(handler) else handler
        if answer.delay:
            await asyncio.sleep(answer.delay)
        chunks = answer.body if isinstance(answer.body, list) else [answer.body]
        raw = [(k.lower().encode(), v.encode()) for k, v in answer.headers]
        if not any(k == b"content-length" for k, _ in raw) and (answer.cut_after_first_chunk or not isinstance(answer.body, list)):
            raw.append((b"content-length", str(sum(map(len, chunks))).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": raw})
        for i, chunk in enumerate(chunks):
            if i and answer.chunk_delay:
                await asyncio.sleep(answer.chunk_delay)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if answer.cut_after_first_chunk:
                raise ConnectionAbortedError("origin cut the body short on purpose")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
