"""A light HTTP/1.1 client for benchmarks: one keep-alive connection driven by h11.

httpx costs milliseconds of CPU per request on a small box, which would slow
the load a benchmark sends and blur what it measures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import h11


class ConnectionClosed(Exception):
    """The server closed the connection before its answer was complete."""


@dataclass
class Answer:
    status: int
    fields: dict[str, str]  # names in lower case; a repeated name keeps its last value
    length: int  # body bytes received
    body: bytes  # the body, when at most `keep` bytes (else only its start)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to `host` (the Host field), requests one at a time."""

    def __init__(self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.host = host
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, address: str, port: int, host: str | None = None) -> HttpConnection:
        reader, writer = await asyncio.open_connection(address, port)
        return cls(host or f"{address}:{port}", reader, writer)

    async def exchange(self, method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                       keep: int = 65536) -> Answer:
        """Send one request and read its whole answer."""
        data = self.conn.send(h11.Request(method=method, target=target, headers=[("host", self.host), *headers]))
        if body:
            data += self.conn.send(h11.Data(data=body))
        self.writer.write(data + self.conn.send(h11.EndOfMessage()))
        answer = Answer(0, {}, 0, b"")
        chunks: list[bytes] = []
        while not isinstance(event := self.conn.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                received = await self.reader.read(262144)
                if not received:
                    raise ConnectionClosed(f"{self.host} closed the connection during {method} {target}")
                self.conn.receive_data(received)
            elif isinstance(event, h11.Response):
                answer.status = event.status_code
                answer.fields = {k.decode(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                answer.length += len(event.data)
                if answer.length <= keep:
                    chunks.append(bytes(event.data))
        self.conn.start_next_cycle()
        answer.body = b"".join(chunks)
        return answer

    def close(self) -> None:
        self.writer.close()
