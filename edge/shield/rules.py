"""Rules as the shield applies them: does a request match, and what key is it counted under."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from edge.headers import Headers
from edge.shield.gcra import Gcra
from edge.shield.settings import RuleSettings

# What `Shield.admit` accepts as request headers: parsed, or the ASGI scope's raw pairs.
HeaderSource = Union[Headers, Sequence[tuple[bytes, bytes]]]


def normalise_path(path: str) -> str:
    """A path with dot segments resolved and empty segments dropped, so /a//../api/ matches prefix /api/."""
    if "//" not in path and "/." not in path:
        return path
    segments: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in (".", ""):
            segments.append(segment)
    trailing = path.endswith(("/", "/.", "/..")) and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else "")


class RequestView:
    """What rules read from one request, each part worked out at most once."""

    __slots__ = ("client", "method", "raw_path", "headers", "_path")

    def __init__(self, client: str | None, method: str, path: str, headers: HeaderSource) -> None:
        self.client = client
        self.method = method
        self.raw_path = path
        self.headers = headers
        self._path: str | None = None

    @property
    def path(self) -> str:
        """The path without a query, normalised."""
        if self._path is None:
            self._path = normalise_path(self.raw_path.split("?", 1)[0])
        return self._path

    def header(self, name: str) -> str | None:
        """The first value of a header field (lowercase `name`), or None."""
        if isinstance(self.headers, Headers):
            return self.headers.get(name)
        wanted = name.encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1").strip(" \t")
        return None


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule ready to apply: settings plus its GCRA and a precomputed shape."""

    index: int
    name: str
    gcra: Gcra
    parts: tuple[str, ...]
    paths: tuple[str, ...]
    methods: frozenset[str]
    scope: str
    action: str
    fleet: bool
    policy: bytes  # its RateLimit-Policy member, which never changes

    @property
    def enforces(self) -> bool:
        """Whether going over this rule refuses the request (reject, shed) rather than only counting it (log)."""
        return self.action != "log"

    def key_for(self, request: RequestView) -> tuple[str, ...] | None:
        """The counter this request goes to, or None when the rule does not apply to it.

        A rule applies when the method and a path prefix match and every key part is known:
        a request without the header (or client address) a rule counts by is left to other rules."""
        if self.methods and request.method not in self.methods:
            return None
        if self.paths and not request.path.startswith(self.paths):
            return None
        values = []
        for part in self.parts:
            if part == "ip":
                value = request.client
            elif part == "method":
                value = request.method
            elif part == "path":
                value = request.path
            else:
                value = request.header(part[7:])  # "header:NAME"
            if value is None:
                return None
            values.append(value)
        return tuple(values)

    def redis_key(self, prefix: str, key: tuple[str, ...]) -> str:
        """The Redis key of one counter; values are hashed (API keys stay out of Redis, lengths stay bounded)."""
        if not key:
            return f"{prefix}shield:{self.name}"
        text = "".join(f"{len(part)}:{part}" for part in key)  # length-prefixed: no two keys run together
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
        return f"{prefix}shield:{self.name}:{digest}"


def policy_item(name: str, gcra: Gcra) -> str:
    """A rule as a RateLimit-Policy member: its burst over the time the burst takes to refill (see `decision`)."""
    window = max(1, math.ceil(gcra.burst / gcra.rate - 1e-9))
    quota = max(gcra.burst, math.floor(gcra.rate * window + 1e-9))
    return f'"{name}";q={quota};w={window}'


def compile_rules(rules: Sequence[RuleSettings]) -> tuple[Rule, ...]:
    """Rules in the order given, ready to apply."""
    compiled = []
    for i, r in enumerate(rules):
        gcra = Gcra(r.rate, r.burst)
        compiled.append(Rule(index=i, name=r.name, gcra=gcra, parts=tuple(r.key), paths=tuple(r.paths),
                             methods=frozenset(r.methods), scope=r.scope, action=r.action, fleet=r.fleet,
                             policy=policy_item(r.name, gcra).encode()))
    return tuple(compiled)
