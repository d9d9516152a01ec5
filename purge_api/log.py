"""The purge log and the edge registry: one interface, kept in Redis or (for a single process) in memory.

The log is an append-only sequence of purges with ordered positions (Redis
stream ids, "ms-seq"). Every edge reads it from its own position and applies
each purge in order; an edge that finds entries were trimmed past its position,
or that the log itself was lost (its epoch changed), empties its cache.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

PURGE_KINDS = ("url", "prefix", "tag", "all")


def position_key(position: str) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence)."""
    ms, _, seq = position.partition("-")
    return int(ms), int(seq or 0)


def after(a: str, b: str) -> bool:
    """Whether position `a` comes after position `b`."""
    return position_key(a) > position_key(b)


@dataclass(frozen=True, slots=True)
class Purge:
    """One invalidation as logged. Events are resolved to tags before logging."""

    id: str
    kind: str  # url | prefix | tag | all
    values: tuple[str, ...] = ()
    soft: bool = False
    created_at: float = 0.0
    version: int | None = None  # a version fence: refuse to store anything older (see edge)
    fenced: tuple[str, ...] | None = None  # the values the version applies to (None: all of them)
    event: str | None = None  # the event that caused it, for display
    seq: int = 0  # its number in the log (1, 2, ...), set by the log: a reader sees any gap

    def to_fields(self) -> dict[str, str]:
        """The log entry's fields; `seq` is the log's to give (dataclasses.asdict would copy deeply: slow)."""
        data = {"id": self.id, "kind": self.kind, "values": self.values, "soft": self.soft,
                "created_at": self.created_at, "version": self.version, "fenced": self.fenced, "event": self.event}
        return {"purge": json.dumps(data, separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> Purge:
        raw = fields.get("purge") or fields.get(b"purge")
        data = json.loads(raw)
        data["values"] = tuple(data.get("values", ()))
        if data.get("fenced") is not None:
            data["fenced"] = tuple(data["fenced"])
        data["seq"] = int(fields.get("seq") or fields.get(b"seq") or 0)
        return cls(**data)


@dataclass(slots=True)
class EdgeInfo:
    """An edge as the registry knows it."""

    id: str
    region: str = ""
    address: str = ""
    latitude: float | None = None
    longitude: float | None = None
    heartbeat_at: float = 0.0
    applied_through: str = "0-0"  # last log position applied, in order
    clean_through: str = "0-0"  # the edge holds nothing from before this position (it started or flushed here)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> EdgeInfo:
        return cls(**json.loads(raw))

    def has_applied(self, position: str) -> bool:
        return not after(position, self.applied_through) or not after(position, self.clean_through)


# An edge's acknowledgement: its id, the entries it applied, and when.
Ack = tuple[str, list[tuple[str, "Purge"]], float]


class LogUnavailable(Exception):
    """The log's store (Redis) cannot be reached or answered badly."""


class NotReplicated(LogUnavailable):
    """A purge is on the Redis master, but fewer replicas than required confirmed it in time."""

    def __init__(self, purge_id: str, message: str) -> None:
        super().__init__(message)
        self.purge_id = purge_id


class PurgeLog(Protocol):
    async def append(self, purge: Purge, idempotency_key: str | None = None, idempotency_ttl: float = 86400) -> tuple[str, Purge]:
        """Log `purge` and return its position; with a key seen before, the first purge and position instead."""

    async def read(self, position: str, block: float, count: int = 512,
                   ack: Ack | None = None) -> list[tuple[str, Purge]]:
        """Entries after `position`, waiting up to `block` seconds for the first; `ack` is recorded first."""

    async def history(self, since: float) -> list[tuple[str, Purge]]:
        """Entries logged at or after Unix time `since` (oldest first, at most the last 10,000)."""

    async def recent(self, count: int) -> list[tuple[str, Purge]]:
        """The last `count` entries still in the log, newest first."""

    async def tail(self) -> tuple[str, int]:
        """The newest position ("0-0" when empty) and how many entries were ever appended up to it."""

    async def epoch(self) -> str:
        """The identity of this log; a different answer means the log was lost and started anew."""

    async def missed_since(self, appended: int) -> bool:
        """Whether entries after the `appended`-th were trimmed away before they could be read."""

    async def find(self, purge_id: str) -> tuple[str, Purge] | None:
        """A logged purge and its position."""

    async def ack(self, edge_id: str, purges: list[tuple[str, Purge]], at: float) -> None:
        """Record that `edge_id` applied these purges at `at`."""

    async def acks(self, purge_id: str) -> dict[str, float]:
        """Edge id -> time it applied `purge_id`."""

    async def heartbeat(self, edge: EdgeInfo) -> None:
        """Register or refresh an edge."""

    async def edges(self) -> list[EdgeInfo]:
        """Every registered edge (live or not)."""

    async def close(self) -> None: ...


def new_purge_id() -> str:
    return "p-" + secrets.token_hex(8)


class MemoryPurgeLog:
    """The purge log for a single process (demo, tests): same behaviour, nothing shared between processes.

    Services in one process may run on different event loops (threads), so readers poll
    instead of waiting on a loop-bound event, and changes take a lock.
    """

    POLL = 0.005

    def __init__(self, maxlen: int = 100_000) -> None:
        self.maxlen = maxlen
        self._entries: list[tuple[str, Purge]] = []
        self._positions: dict[str, str] = {}  # purge id -> position
        self._acks: dict[str, dict[str, float]] = {}
        self._edges: dict[str, EdgeInfo] = {}
        self._idempotency: dict[str, tuple[str, float]] = {}
        self._epoch = secrets.token_hex(8)
        self._max_trimmed = "0-0"
        self._appended = 0
        self._lock = threading.Lock()

    def _next_position(self) -> str:
        ms = int(time.time() * 1000)
        last = self._entries[-1][0] if self._entries else self._max_trimmed
        last_ms, last_seq = position_key(last)
        if ms <= last_ms:
            return f"{last_ms}-{last_seq + 1}"
        return f"{ms}-0"

    async def append(self, purge: Purge, idempotency_key: str | None = None, idempotency_ttl: float = 86400) -> tuple[str, Purge]:
        with self._lock:
            now = time.time()
            if idempotency_key is not None:
                seen = self._idempotency.get(idempotency_key)
                if seen is not None and seen[1] > now and seen[0] in self._positions:
                    first = self._find(seen[0])
                    if first is not None:
                        return first
                self._idempotency[idempotency_key] = (purge.id, now + idempotency_ttl)
            position = self._next_position()
            self._appended += 1
            purge = replace(purge, seq=self._appended)
            self._entries.append((position, purge))
            self._positions[purge.id] = position
            if len(self._entries) > self.maxlen:
                dropped = self._entries[: len(self._entries) - self.maxlen]
                del self._entries[: len(dropped)]
                self._max_trimmed = dropped[-1][0]
                for _, old in dropped:
                    self._positions.pop(old.id, None)
                    self._acks.pop(old.id, None)
            return position, purge

    async def read(self, position: str, block: float, count: int = 512,
                   ack: Ack | None = None) -> list[tuple[str, Purge]]:
        if ack is not None:
            await self.ack(*ack)
        deadline = time.monotonic() + block
        while True:
            with self._lock:
                start = bisect.bisect_right(self._entries, position_key(position), key=lambda e: position_key(e[0]))
                newer = self._entries[start:start + count]
            if newer or time.monotonic() >= deadline:
                return newer
            await asyncio.sleep(self.POLL)

    async def history(self, since: float) -> list[tuple[str, Purge]]:
        with self._lock:
            start = bisect.bisect_left(self._entries, (int(since * 1000), 0), key=lambda e: position_key(e[0]))
            return self._entries[start:][-10_000:]

    async def recent(self, count: int) -> list[tuple[str, Purge]]:
        with self._lock:
            return self._entries[max(0, len(self._entries) - count):][::-1]

    async def tail(self) -> tuple[str, int]:
        return (self._entries[-1][0] if self._entries else self._max_trimmed), self._appended

    async def epoch(self) -> str:
        return self._epoch

    async def missed_since(self, appended: int) -> bool:
        trimmed = self._appended - len(self._entries)
        return trimmed > appended or appended > self._appended

    async def find(self, purge_id: str) -> tuple[str, Purge] | None:
        with self._lock:
            return self._find(purge_id)

    def _find(self, purge_id: str) -> tuple[str, Purge] | None:
        position = self._positions.get(purge_id)
        if position is None:
            return None
        for entry in reversed(self._entries):
            if entry[0] == position:
                return entry
        return None

    async def ack(self, edge_id: str, purges: list[tuple[str, Purge]], at: float) -> None:
        for _, purge in purges:
            if purge.id in self._positions:
                self._acks.setdefault(purge.id, {})[edge_id] = at

    async def acks(self, purge_id: str) -> dict[str, float]:
        return dict(self._acks.get(purge_id, {}))

    async def heartbeat(self, edge: EdgeInfo) -> None:
        self._edges[edge.id] = EdgeInfo(**asdict(edge))

    async def edges(self) -> list[EdgeInfo]:
        return [EdgeInfo(**asdict(e)) for e in self._edges.values()]

    async def close(self) -> None:
        return None


# Number the purge, XADD it and index id -> position in one step, so a logged purge can always
# be found by id and a reader can tell when it skipped one.
_APPEND = """
local seq = redis.call('INCR', KEYS[3])
local position = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'purge', ARGV[2], 'seq', seq)
redis.call('SET', KEYS[2], position, 'EX', ARGV[3])
return {position, seq}
"""
# The newest position with its number, and how many entries the stream still holds, read together.
_TAIL = """
local position, length = '0-0', 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then position = info[i + 1] end
    if info[i] == 'length' then length = info[i + 1] end
  end
end
return {position, tonumber(redis.call('GET', KEYS[2]) or '0'), length}
"""

# One edge's acknowledgement of a whole batch in one call: one round trip, however many purges it read.
_ACK = """
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
"""


class RedisPurgeLog:
    """The purge log in Redis: a stream trimmed by length, an epoch key, ack hashes and an edge registry hash."""

    def __init__(self, url: str, prefix: str = "cdn:", maxlen: int = 100_000, record_ttl: int = 3600,
                 timeout: float = 2.0, replicas: int = 0, replica_timeout: float = 0.5) -> None:
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        from cdn.redis_url import redis_from_url

        # One quick retry covers a pooled connection that died with a Redis restart (or a master
        # that Sentinel replaced); a purge applied twice is harmless, a purge lost is not.
        self.redis = redis_from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout + 5,
                                    decode_responses=True,
                                    retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
                                    retry_on_error=[RedisConnectionError])
        self.prefix = prefix
        self.stream = prefix + "purge-log"
        self.maxlen = maxlen
        self.record_ttl = record_ttl
        self.seq_key = prefix + "purge-seq"
        self.replicas = replicas
        self.replica_timeout = replica_timeout
        self._append = self.redis.register_script(_APPEND)
        self._tail = self.redis.register_script(_TAIL)

    async def _call(self, coro: Any) -> Any:
        import redis.exceptions

        try:
            return await coro
        except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError) as exc:
            raise LogUnavailable(f"redis: {exc.__class__.__name__}: {exc}") from None

    async def append(self, purge: Purge, idempotency_key: str | None = None, idempotency_ttl: float = 86400) -> tuple[str, Purge]:
        ttl = int(idempotency_ttl)
        if idempotency_key is not None:
            key = f"{self.prefix}idem:{idempotency_key}"
            if not await self._call(self.redis.set(key, purge.id, nx=True, ex=ttl)):
                first = await self._call(self.redis.get(key))
                for _ in range(20):  # the first call may be logging it right now
                    found = await self.find(first) if first else None
                    if found is not None:
                        await self._replicated(found[1])  # a retry after a 503 waits for the replicas again
                        return found
                    await asyncio.sleep(0.05)
                await self._call(self.redis.set(key, purge.id, ex=ttl))
        fields = purge.to_fields()["purge"]
        position, seq = await self._call(self._append(keys=[self.stream, f"{self.prefix}purge:{purge.id}", self.seq_key],
                                                      args=[self.maxlen, fields, self.record_ttl]))
        await self._replicated(purge)
        return position, replace(purge, seq=int(seq))

    async def _replicated(self, purge: Purge) -> None:
        """With `replicas` set, raise NotReplicated unless that many replicas hold everything written so far."""
        if not self.replicas:
            return
        # WAIT counts the writes of its own connection: a write on the same connection, after the purge's
        # (the master replicates in order), so that replicas holding it hold the purge too.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(f"{self.prefix}replicated", purge.id, ex=60)
            pipe.wait(self.replicas, int(self.replica_timeout * 1000))
            _, confirmed = await self._call(pipe.execute())
        if confirmed < self.replicas:
            raise NotReplicated(purge.id, f"purge {purge.id} is on the Redis master, but {confirmed} of {self.replicas} "
                                          f"replica(s) confirmed it within {self.replica_timeout:g} s")

    async def read(self, position: str, block: float, count: int = 512,
                   ack: Ack | None = None) -> list[tuple[str, Purge]]:
        block_ms = max(1, int(block * 1000))
        if ack is None:
            answer = await self._call(self.redis.xread({self.stream: position}, count=count, block=block_ms))
        else:  # the ack and the next read in one round trip: a following edge makes one call per batch
            async with self.redis.pipeline(transaction=False) as pipe:
                self._pipe_ack(pipe, *ack)
                pipe.xread({self.stream: position}, count=count, block=block_ms)
                _, answer = await self._call(pipe.execute())
        if not answer:
            return []
        _, entries = answer[0]
        return [(entry_id, Purge.from_fields(fields)) for entry_id, fields in entries]

    async def history(self, since: float) -> list[tuple[str, Purge]]:
        entries = await self._call(self.redis.xrevrange(self.stream, "+", f"{int(since * 1000)}-0", count=10_000))
        return [(entry_id, Purge.from_fields(fields)) for entry_id, fields in reversed(entries)]

    async def recent(self, count: int) -> list[tuple[str, Purge]]:
        entries = await self._call(self.redis.xrevrange(self.stream, "+", "-", count=count))
        return [(entry_id, Purge.from_fields(fields)) for entry_id, fields in entries]

    async def tail(self) -> tuple[str, int]:
        position, seq, _ = await self._call(self._tail(keys=[self.stream, self.seq_key]))
        return position, int(seq)

    async def epoch(self) -> str:
        key = self.prefix + "epoch"
        await self._call(self.redis.set(key, secrets.token_hex(8), nx=True))
        return await self._call(self.redis.get(key))

    async def missed_since(self, appended: int) -> bool:
        # Entries only ever leave from the front (trimming), so the ones gone are the first
        # seq - length; a number below ours means the log started over.
        _, seq, length = await self._call(self._tail(keys=[self.stream, self.seq_key]))
        return int(seq) - int(length) > appended or appended > int(seq)

    async def find(self, purge_id: str) -> tuple[str, Purge] | None:
        position = await self._call(self.redis.get(f"{self.prefix}purge:{purge_id}"))
        if not position:
            return None
        entries = await self._call(self.redis.xrange(self.stream, position, position))
        if not entries:
            return None
        return entries[0][0], Purge.from_fields(entries[0][1])

    async def ack(self, edge_id: str, purges: list[tuple[str, Purge]], at: float) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            self._pipe_ack(pipe, edge_id, purges, at)
            await self._call(pipe.execute())

    def _pipe_ack(self, pipe: Any, edge_id: str, purges: list[tuple[str, Purge]], at: float) -> None:
        keys = [f"{self.prefix}acks:{purge.id}" for _, purge in purges]
        pipe.eval(_ACK, len(keys), *keys, edge_id, repr(at), self.record_ttl)  # Redis caches the compiled script

    async def acks(self, purge_id: str) -> dict[str, float]:
        raw = await self._call(self.redis.hgetall(f"{self.prefix}acks:{purge_id}"))
        return {edge: float(at) for edge, at in raw.items()}

    async def heartbeat(self, edge: EdgeInfo) -> None:
        await self._call(self.redis.hset(self.prefix + "edges", edge.id, edge.to_json()))

    async def edges(self) -> list[EdgeInfo]:
        raw = await self._call(self.redis.hgetall(self.prefix + "edges"))
        return [EdgeInfo.from_json(v) for v in raw.values()]

    async def close(self) -> None:
        await self.redis.aclose()


def open_log(redis_url: str | None, **kwargs: Any) -> PurgeLog:
    """Redis when a URL is given, else the in-process log."""
    if redis_url:
        return RedisPurgeLog(redis_url, **kwargs)
    return MemoryPurgeLog(kwargs.get("maxlen", 100_000))
