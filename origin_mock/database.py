"""The shop's data: products (every committed version, so replicas can lag) and carts.

In memory for one process, or in Redis so that several origin instances behind
one load balancer are identical and stateless: whatever one writes, every
other reads.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

from cachetools import LRUCache

from origin_mock.catalog import Product

HISTORY = 32  # versions kept per product: enough for any replica lag worth modelling
CART_TTL = 86400


class Database(Protocol):
    async def versions(self, ids: list[int], as_of: float | None) -> dict[int, Product]:
        """The newest committed version of each product at `as_of` (None: now); absent if never written."""

    async def commit(self, product: Product, at: float) -> None:
        """Record a new version, committed at `at` (the primary's clock)."""

    async def new_session(self) -> str: ...

    async def cart(self, session: str) -> dict[int, int] | None:
        """The session's cart, or None when the session is unknown."""

    async def add_to_cart(self, session: str, product_id: int, quantity: int) -> None: ...

    async def close(self) -> None: ...


class MemoryDatabase:
    def __init__(self, max_sessions: int = 10_000) -> None:
        self._history: dict[int, list[tuple[float, Product]]] = {}
        self._carts: LRUCache[str, dict[int, int]] = LRUCache(maxsize=max_sessions)

    async def versions(self, ids: list[int], as_of: float | None) -> dict[int, Product]:
        found = {}
        for pid in ids:
            for committed_at, product in reversed(self._history.get(pid, ())):
                if as_of is None or committed_at <= as_of:
                    found[pid] = product
                    break
        return found

    async def commit(self, product: Product, at: float) -> None:
        history = self._history.setdefault(product.id, [])
        history.append((at, product))
        del history[:-HISTORY]

    async def new_session(self) -> str:
        session = secrets.token_urlsafe(16)
        self._carts[session] = {}
        return session

    async def cart(self, session: str) -> dict[int, int] | None:
        cart = self._carts.get(session)
        return dict(cart) if cart is not None else None

    async def add_to_cart(self, session: str, product_id: int, quantity: int) -> None:
        cart = self._carts.setdefault(session, {})
        cart[product_id] = cart.get(product_id, 0) + quantity

    async def close(self) -> None:
        return None


class RedisDatabase:
    """Versions in a sorted set per product (score: commit time), carts in hashes with a TTL."""

    def __init__(self, url: str, prefix: str = "origin:") -> None:
        from cdn.redis_url import redis_from_url

        self.redis = redis_from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.prefix = prefix

    async def versions(self, ids: list[int], as_of: float | None) -> dict[int, Product]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid in ids:
                key = f"{self.prefix}product:{pid}"
                if as_of is None:
                    pipe.zrange(key, -1, -1)
                else:
                    pipe.zrevrangebyscore(key, as_of, "-inf", start=0, num=1)
            answers = await pipe.execute()
        return {pid: _product(found[0]) for pid, found in zip(ids, answers) if found}

    async def commit(self, product: Product, at: float) -> None:
        key = f"{self.prefix}product:{product.id}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {json.dumps(asdict(product)): at})
            pipe.zremrangebyrank(key, 0, -HISTORY - 1)
            await pipe.execute()

    async def new_session(self) -> str:
        session = secrets.token_urlsafe(16)
        await self.redis.hset(f"{self.prefix}cart:{session}", "_", 0)
        await self.redis.expire(f"{self.prefix}cart:{session}", CART_TTL)
        return session

    async def cart(self, session: str) -> dict[int, int] | None:
        raw = await self.redis.hgetall(f"{self.prefix}cart:{session}")
        if not raw:
            return None
        return {int(k): int(v) for k, v in raw.items() if k != b"_"}

    async def add_to_cart(self, session: str, product_id: int, quantity: int) -> None:
        key = f"{self.prefix}cart:{session}"
        await self.redis.hincrby(key, str(product_id), quantity)
        await self.redis.expire(key, CART_TTL)

    async def close(self) -> None:
        await self.redis.aclose()


def _product(raw: bytes | str) -> Product:
    return Product(**json.loads(raw))


def open_database(redis_url: str | None, prefix: str = "origin:") -> Database:
    return RedisDatabase(redis_url, prefix) if redis_url else MemoryDatabase()


class Replication:
    """A primary and read replicas that lag: reads see the database as it was `lag` ago.

    A client's reads go to the primary while its read-your-writes cookie is valid.
    """

    def __init__(self, replicas: int, lag: float, jitter: float, read_your_writes: float,
                 rng: Callable[[], float], clock: Callable[[], float] = time.time) -> None:
        self.replicas = replicas
        self.lag = lag
        self.jitter = jitter
        self.read_your_writes = read_your_writes
        self.rng = rng
        self.clock = clock
        self.reads: dict[str, int] = {}

    def read_point(self, primary_until: float | None) -> tuple[float | None, str]:
        """When the chosen server's view of the data stands (None: now, the primary) and its name."""
        now = self.clock()
        if self.replicas == 0 or (primary_until is not None and primary_until > now):
            where, as_of = "primary", None
        else:
            index = int(self.rng() * self.replicas) % self.replicas
            lag = max(0.0, self.lag + (self.rng() * 2 - 1) * self.jitter)
            where, as_of = f"replica-{index}", now - lag
        self.reads[where] = self.reads.get(where, 0) + 1
        return as_of, where
