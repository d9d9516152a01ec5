"""How every service reaches Redis: one URL, naming either one server or a master that Sentinels watch.

    redis://[[user]:password@]host[:port][/db]        one server (and redis-py's other forms: rediss://, unix://)
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=...]
                                                     the master of `service` that the listed Sentinels name
                                                     (port 26379 unless given); the client follows a failover

The user and password are the Redis servers' (master and replicas); `sentinel_password` is
the Sentinels' own, if they have one. `RedisUrl` is the type of every service's `redis`
setting, so a malformed URL stops a service at start-up; `redis_from_url` is the one
place a client is made.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import AfterValidator

if TYPE_CHECKING:  # redis is imported when a client is made: settings load without it
    import redis.asyncio as aioredis

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
PLAIN_FORM = "redis://[[user]:password@]host[:port][/db]"
SENTINEL_FORM = "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=...]"


@dataclass(frozen=True)
class SentinelUrl:
    """What a `redis+sentinel://` URL says: where the Sentinels are, which master, and how to log in."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of a Sentinel URL; ValueError saying what is wrong (without echoing a password)."""

    def malformed(why: str) -> ValueError:
        return ValueError(f"malformed Sentinel URL: {why}; the form is {SENTINEL_FORM}")

    if not is_sentinel_url(url):
        raise malformed(f"it does not start with {SENTINEL_SCHEME}://")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced [ in an IPv6 address
        raise malformed(str(exc)) from None
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = []
    for host in hosts.split(","):
        bad_port = malformed(f"the Sentinel address {host!r} needs a port from 1 to 65535 after the colon")
        try:
            address = urlsplit("//" + host)
            port = SENTINEL_PORT if address.port is None else address.port
        except ValueError:
            raise bad_port from None
        if not 0 < port < 65536:
            raise bad_port
        if not address.hostname:
            raise malformed("a Sentinel host is missing" if hosts else "it names no Sentinel host")
        sentinels.append((address.hostname, port))
    path = parts.path.split("/")[1:]
    if len(path) == 2 and not path[1]:
        path.pop()  # a trailing slash
    if not path or not path[0]:
        raise malformed("it names no service (the master's name in `sentinel monitor NAME ...`)")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise malformed(f"after the service comes at most a database number, not {'/'.join(path[1:])!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"sentinel_password"})
    if unknown:
        raise malformed(f"unknown parameter {unknown[0]!r} (only sentinel_password is understood)")
    return SentinelUrl(
        sentinels=tuple(sentinels), service=unquote(path[0]), db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None, password=unquote(password) or None,
        sentinel_password=query["sentinel_password"][0] if "sentinel_password" in query else None)


def check_redis_url(url: str) -> str:
    """`url` unchanged if a client can be made from it (empty: no Redis); else a ValueError saying why."""
    if not url:
        return url
    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return url
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError as exc:
        # Without what it quotes of the URL: a malformed one may be split inside its password.
        why = re.sub(r"'[^']*'", "'...'", str(exc))
        raise ValueError(f"{why} (the forms are {PLAIN_FORM} and {SENTINEL_FORM})") from None
    return url


RedisUrl = Annotated[str, AfterValidator(check_redis_url)]
"""The type of a `redis` setting: a URL `redis_from_url` accepts."""


@functools.cache
def _sentinel_master() -> type[aioredis.Redis]:
    import redis.asyncio as aioredis

    class SentinelMaster(aioredis.Redis):
        """A client of the master the Sentinels name: closing it also closes its Sentinel connections."""

        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            await super().aclose(close_connection_pool)
            for sentinel in self.connection_pool.sentinel_manager.sentinels:
                await sentinel.aclose()

    return SentinelMaster


def redis_from_url(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio redis-py client of `url`; `kwargs` as for `redis.asyncio.from_url`.

    With a Sentinel URL every new connection first asks the Sentinels for the master, and a
    connection to a master that died or was demoted fails, so the client reaches the new
    master once the Sentinels have promoted one (`Sentinel.master_for`).
    """
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import NoBackoff

    if not is_sentinel_url(url):
        return aioredis.from_url(url, **kwargs)
    target = parse_sentinel_url(url)
    # The Sentinel list is the redundancy: a Sentinel that does not answer is skipped at once, not retried.
    sentinel_kwargs: dict[str, Any] = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    sentinel_kwargs["retry"] = Retry(NoBackoff(), 0)
    if target.sentinel_password is not None:
        sentinel_kwargs["password"] = target.sentinel_password
    credentials = {k: v for k, v in (("username", target.username), ("password", target.password)) if v is not None}
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(target.service, redis_class=_sentinel_master(), db=target.db, **credentials, **kwargs)
