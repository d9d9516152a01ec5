"""Parsers for the header fields the cache reads. Pure: values in, values out, never an exception.

Every parser takes the field's lines as received (a list of strings, one per
header line) and returns a defined answer for any input, however malformed.
"""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# RFC 9111 §1.2.2: delta-seconds too large to represent become 2^31.
DELTA_SECONDS_MAX = 2**31

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = re.compile(r"[0-9]+\Z")


@functools.lru_cache(maxsize=1024)
def field_name_text(name: bytes) -> str:
    """A stored field name as text: one str per name, shared by every entry."""
    return name.decode("latin-1")


class Headers:
    """An ordered multi-map of header fields with lowercase names (str, latin-1 decoded).

    Lookups go through a name -> values index built on first use and rebuilt when `items` grows.
    """

    __slots__ = ("items", "_index", "_indexed")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self.items: list[tuple[str, str]] = [(k.lower(), v) for k, v in items]
        self._index: dict[str, list[str]] | None = None
        self._indexed = 0

    @classmethod
    def _of(cls, items: list[tuple[str, str]]) -> Headers:
        h = cls.__new__(cls)
        h.items = items
        h._index = None
        h._indexed = 0
        return h

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """From ASGI/httpx byte pairs; surrounding whitespace is not part of a value (RFC 9110 §5.5)."""
        return cls._of([(k.decode("latin-1").lower(), v.decode("latin-1").strip(" \t")) for k, v in raw])

    @classmethod
    def from_stored(cls, *parts: Iterable[tuple[bytes, bytes]]) -> Headers:
        """From byte pairs the edge stored itself: names already in lower case, values already trimmed."""
        return cls._of([(field_name_text(k), v.decode("latin-1")) for part in parts for k, v in part])

    def fields(self) -> dict[str, list[str]]:
        """Name -> its values in order; read-only."""
        index = self._index
        if index is None or self._indexed != len(self.items):
            index = {}
            for k, v in self.items:
                values = index.get(k)
                if values is None:
                    index[k] = [v]
                else:
                    values.append(v)
            self._index, self._indexed = index, len(self.items)
        return index

    def get_all(self, name: str) -> list[str]:
        values = self.fields().get(name)
        return list(values) if values else []

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.fields().get(name)
        return values[0] if values else default

    def __contains__(self, name: object) -> bool:
        return name in self.fields()

    def remove(self, names: Iterable[str]) -> Headers:
        drop = set(names)
        return Headers._of([(k, v) for k, v in self.items if k not in drop])

    def replace(self, name: str, value: str) -> None:
        self.items = [(k, v) for k, v in self.items if k != name]
        self.items.append((name, value))

    def raw(self) -> list[tuple[bytes, bytes]]:
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.items]

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


def split_list(lines: Sequence[str]) -> list[str]:
    """Members of a comma-separated list field (RFC 9110 §5.6.1), commas inside quoted strings kept."""
    members: list[str] = []
    for line in lines:
        if '"' not in line:  # no quoted string: every comma separates (what the loop below finds, faster)
            members += [member.strip() for member in line.split(",")]
            continue
        current: list[str] = []
        in_quotes = escaped = False
        for ch in line:
            if escaped:
                escaped = False
            elif ch == "\\" and in_quotes:
                escaped = True
            elif ch == '"':
                in_quotes = not in_quotes
            elif ch == "," and not in_quotes:
                members.append("".join(current).strip())
                current = []
                continue
            current.append(ch)
        members.append("".join(current).strip())
    return [m for m in members if m]


def _unquote(value: str) -> str | None:
    """The content of a quoted-string, or None if `value` is an unterminated one."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    if value[:1] == '"':
        return None
    return value


@dataclass(frozen=True, slots=True)
class Directives:
    """Parsed Cache-Control-style directives: lowercase name -> argument (None when absent).

    `duplicated` names directives seen more than once with different arguments;
    RFC 9111 §4.2.1 lets a cache treat such a response as stale.
    """

    values: dict[str, str | None]
    duplicated: frozenset[str] = frozenset()

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def seconds(self, name: str) -> int | None:
        """The delta-seconds argument of `name`; None if absent; -1 if present but invalid."""
        if name not in self.values:
            return None
        return delta_seconds(self.values[name])

    def field_names(self, name: str) -> frozenset[str]:
        """Field names listed in a qualified directive such as `no-cache="Set-Cookie"`."""
        arg = self.values.get(name)
        if not arg:
            return frozenset()
        return frozenset(f.strip().lower() for f in arg.split(",") if f.strip())

    def __bool__(self) -> bool:
        return bool(self.values)


EMPTY_DIRECTIVES = Directives({})


def parse_directives(lines: Sequence[str]) -> Directives:
    """Cache-Control (RFC 9111 §5.2) and its targeted kin; the first occurrence of a directive wins."""
    values: dict[str, str | None] = {}
    duplicated: set[str] = set()
    for member in split_list(lines):
        name, sep, arg = member.partition("=")
        name = name.strip().lower()
        if not name or not set(name) <= _TOKEN_CHARS:
            continue
        value: str | None = None
        if sep:
            value = _unquote(arg.strip())
            if value is None:
                value = ""  # unterminated quote: present but unusable
        if name in values:
            if values[name] != value:
                duplicated.add(name)
            continue
        values[name] = value
    return Directives(values, frozenset(duplicated))


def _capped(digits: str) -> int:
    """An ASCII digit string as an int no larger than 2^31 (int() refuses thousands of digits)."""
    digits = digits.lstrip("0") or "0"
    return DELTA_SECONDS_MAX if len(digits) > 10 else min(int(digits), DELTA_SECONDS_MAX)


def delta_seconds(value: str | None) -> int:
    """RFC 9111 §1.2.2 delta-seconds: ASCII digits only; -1 when invalid, capped at 2^31."""
    if value is None or not _DIGITS.match(value):
        return -1
    return _capped(value)


def parse_surrogate_control(lines: Sequence[str], device: str) -> Directives:
    """Surrogate-Control (Edge Architecture 1.0) directives for `device`: untargeted ones, or `;device` ones.

    Targeted directives for this device override untargeted ones of the same name.
    """
    general: list[str] = []
    targeted: list[str] = []
    for member in split_list(lines):
        directive, sep, target = member.partition(";")
        if not sep:
            general.append(directive)
        elif target.strip() == device:
            targeted.append(directive)
    merged = dict(parse_directives(general).values)
    merged.update(parse_directives(targeted).values)
    return Directives(merged)


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date (IMF-fixdate, RFC 850 or asctime) as a Unix time, or None if invalid."""
    if not value:
        return None
    # A Date is the same for a second, a Last-Modified for an object's life: the short ones are remembered.
    return _remembered_http_date(value) if len(value) <= 64 else _parse_http_date(value)


def _parse_http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_tz(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None or parsed[0] < 1900:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


_remembered_http_date = functools.lru_cache(maxsize=1024)(_parse_http_date)


def format_http_date(timestamp: float) -> str:
    """IMF-fixdate for a Unix time."""
    return email.utils.formatdate(timestamp, usegmt=True)


def single_date(lines: Sequence[str]) -> float | None:
    """The time a single-valued date field (Date, Last-Modified) names; None if absent, repeated or invalid."""
    if len(lines) != 1:
        return None
    return parse_http_date(lines[0])


AGE_INVALID = float("inf")


def parse_age(lines: Sequence[str]) -> float:
    """The Age value (RFC 9111 §5.1): 0 when absent, `AGE_INVALID` when malformed or repeated."""
    if not lines:
        return 0.0
    if len(lines) != 1:
        return AGE_INVALID
    value = lines[0].strip()
    if not _DIGITS.match(value):
        return AGE_INVALID
    return float(_capped(value))


def parse_vary(lines: Sequence[str]) -> tuple[str, ...] | None:
    """The field names a response varies on, lowercased and sorted; None for `Vary: *`, and for a member
    that is no field name (`a=b`), which can select nothing either."""
    names = {m.lower() for m in split_list(lines)}
    if "*" in names or not all(set(name) <= _TOKEN_CHARS for name in names):
        return None
    return tuple(sorted(names))


def normalise_selecting_value(name: str, lines: Sequence[str]) -> str | None:
    """One canonical string for a request's values of a Vary-selected field (None when absent)."""
    if not lines:
        return None
    members = [re.sub(r"\s+", "", m) for m in split_list(lines)]
    if name in ("accept-language", "accept-encoding"):
        members = sorted(m.lower() for m in members)
    return ",".join(members)


NO_TAGS: frozenset[str] = frozenset()  # shared: CPython makes a new 216-byte empty frozenset each time


def surrogate_keys(surrogate_key_lines: Sequence[str], cache_tag_lines: Sequence[str]) -> frozenset[str]:
    """Tags from `Surrogate-Key` (space-separated) and `Cache-Tag` (comma-separated)."""
    if not surrogate_key_lines and not cache_tag_lines:
        return NO_TAGS
    tags = {t for line in surrogate_key_lines for t in line.split()}
    tags.update(split_list(cache_tag_lines))
    return frozenset(t for t in tags if t.isprintable() and len(t) <= 1024) or NO_TAGS


_ENTITY_TAG = re.compile(r'\s*((?:W/)?"[^"]*")\s*(?:,|\Z)')


def parse_entity_tags(value: str) -> list[str] | None:
    """The entity-tags of If-None-Match / If-Match; None means `*`. A backslash is an ordinary etagc."""
    if value.strip() == "*":
        return None
    tags = []
    position = 0
    while position < len(value):
        if value[position] in " \t,":
            position += 1
            continue
        match = _ENTITY_TAG.match(value, position)
        if match is None:  # not an entity-tag: keep the member as written, it matches nothing real
            end = value.find(",", position)
            end = len(value) if end < 0 else end
            tags.append(value[position:end].strip())
            position = end + 1
            continue
        tags.append(match.group(1))
        position = match.end()
    return tags


def weak_match(a: str, b: str) -> bool:
    """Weak comparison of two entity-tags (RFC 9110 §8.8.3.2)."""
    return a.removeprefix("W/") == b.removeprefix("W/")


def parse_range(value: str | None, length: int) -> tuple[int, int] | str | None:
    """A single byte range within `length` as (first, last); "unsatisfiable"; or None to ignore the header.

    Multiple ranges and other units are ignored (a full 200 answers them, RFC 9110 §14.2).
    """
    if not value:
        return None
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec.split(",")]
    if len(specs) != 1:
        return None
    first_s, dash, last_s = specs[0].partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or (first_s and not _DIGITS.match(first_s)) or (last_s and not _DIGITS.match(last_s)):
        return None
    # Positions beyond 10^18 bytes are past any stored body; clip them before int() sees thousands of digits.
    first_s, last_s = (d.lstrip("0") or ("0" if d else "") for d in (first_s, last_s))
    first_s, last_s = (d if len(d) <= 19 else "9" * 19 for d in (first_s, last_s))
    if not first_s:
        if not last_s:
            return None
        suffix = int(last_s)
        if suffix == 0:
            return "unsatisfiable"
        return (max(0, length - suffix), length - 1) if length else "unsatisfiable"
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None  # invalid range-spec: ignore the header (RFC 9110 §14.1.1)
    if first >= length:
        return "unsatisfiable"
    last = int(last_s) if last_s else length - 1
    return first, min(last, length - 1)
