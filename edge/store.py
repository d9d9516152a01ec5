"""The cache store: a byte-bounded LRU of entries with a URL index and a tag index kept in step.

The store knows keys, sizes, URLs and tags; what an entry means in HTTP is the
request path's business. Every way an entry leaves (eviction, replacement,
delete, purge) goes through `_remove`, so the indexes stay exact.
"""

from __future__ import annotations

import ctypes
import sys
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass


# What an entry costs in memory beyond its body, key text and fields, as measured through the edge's own
# miss path (tests/test_store_memory.py keeps these at or above the real cost, memory_bench.py shows RSS):
# per entry the Entry (the request path's Stored: freshness and fields in the same object), its key's
# and body's object headers, its response time (a float of its own) and its key in the store's dict;
# per tag, its string in the tag index (the first entry to carry a tag pays for it) and its key in the
# tag's keys. Both allow for the dicts having just grown (a dict key costs 21 to 60 bytes) and for the
# allocator's rounding.
ENTRY_OVERHEAD = 380  # at 20,000 to 45,000 entries: 290 to 315 traced, 330 to 350 of RSS
TAG_OVERHEAD = 120  # a tag only this entry carries: its string (49 + length) and two index keys' worth
# Stored header fields are kept as one bytes object (BLOCK_OVERHEAD beyond its text and separators).
BLOCK_OVERHEAD = 40


def stored_fields_size(block: bytes) -> int:
    """Memory the header fields of one entry take, as the store charges it: `block` is their bytes object."""
    return BLOCK_OVERHEAD + len(block) if block else 0


def _untracker() -> Callable[[Entry], None]:
    """CPython's PyObject_GC_UnTrack (elsewhere, nothing)."""
    if sys.implementation.name != "cpython":
        return lambda entry: None
    untrack = ctypes.pythonapi.PyObject_GC_UnTrack  # a PyDLL function: called with the GIL held
    untrack.argtypes = [ctypes.py_object]
    untrack.restype = None
    return untrack


# A stored entry is left out of the cycle collector's sight: its slots hold strings, bytes, numbers and
# frozen values of them, so it can never be part of a reference cycle, and a full collection, which holds every
# request while it runs, would otherwise visit every entry (at 100,000 entries, 100 ms instead of 25).
# Reference counting frees it as before.
untrack = _untracker()

# Purges remembered to judge responses that were being fetched while they were applied.
RECENT_PURGES = 4096


# A variant's key is its URL, a NUL, and what selects it (a URL holds no NUL: `edge.app.request_target`).
VARIANT = "\0"


def variant_key(url: str, selecting: Iterable[str]) -> str:
    """The key of the variant of `url` that `selecting` (one string per Vary-selected field) chooses."""
    return VARIANT.join((url, *selecting))


@dataclass(slots=True, eq=False, kw_only=True)
class Entry:
    """One stored response variant. The request path's subclass (`edge.app.Stored`) adds what it means
    in HTTP: status, freshness, fields, and its tags, which it reads from its fields. One object per
    entry, not an entry and its metadata: each costs its header and the garbage collector's. Its slots
    hold only strings, bytes, numbers and frozen values of them (the store takes it out of the cycle
    collector's sight: see `untrack`)."""

    key: str  # unique per variant: its URL, or for a Vary-selected variant `variant_key(url, ...)` (no NUL in a URL)
    body: bytes
    soft_purged: bool = False
    serial: int = 0  # the store's purge serial when it was stored, or last looked at against tag purges
    # Its neighbours in the store's LRU order, by key: a key is a string the store holds anyway, where
    # a link to the entry itself would close a reference cycle the collector does not see.
    older: str | None = None
    newer: str | None = None

    @property
    def url(self) -> str:
        """The URL key all variants of a resource share (the key itself, for a URL with one)."""
        return self.key.partition(VARIANT)[0]

    @property
    def tags(self) -> Collection[str]:
        """Its surrogate keys (the subclasses that have some say)."""
        return ()

    def fields_size(self) -> int:
        """Memory its header fields take (the subclass that keeps fields says)."""
        return 0

    def charge(self, tags: Collection[str]) -> int:
        """What the store charges for it, `tags` being its tags: worked out when asked, not kept (an int of
        its own is 28 bytes). Nothing it is made of changes while it is stored."""
        key = self.key
        url_length = max(key.find(VARIANT), 0)  # a variant's URL is held once more, in the index of variants
        return (len(self.body) + len(key) + url_length + self.fields_size() + ENTRY_OVERHEAD
                + sum(TAG_OVERHEAD + len(t) for t in tags))

    @property
    def size(self) -> int:
        return self.charge(self.tags)


@dataclass(slots=True, eq=False, kw_only=True)
class TaggedEntry(Entry):
    """An entry that holds the tags it is given (as a frozenset: the store reads them again when it removes
    the entry, and must find what it indexed)."""

    tags: Collection[str] = frozenset()

    def __post_init__(self) -> None:
        self.tags = frozenset(self.tags)


def _members(index: dict[str, str | dict[str, None]], name: str) -> list[str]:
    found = index.get(name)
    if found is None:
        return []
    return [found] if isinstance(found, str) else list(found)


def _add_member(index: dict[str, str | dict[str, None]], name: str, key: str) -> None:
    found = index.get(name)
    if found is None:
        index[name] = key
    elif isinstance(found, str):
        index[name] = {found: None, key: None}
    else:
        found[key] = None


def _remove_member(index: dict[str, str | dict[str, None]], name: str, key: str) -> bool:
    """Take `key` out of `name`'s members; True when it was the last."""
    found = index.get(name)
    if isinstance(found, dict):
        found.pop(key, None)
        if len(found) == 1:
            index[name] = next(iter(found))
    elif found == key:
        del index[name]
        return True
    return False


class Store:
    """Entries bounded by total bytes, least recently used out first, with `url -> keys` (of variants)
    and `tag -> keys` indexes.

    One dict holds the entries by key; their LRU order is a list linked through the entries (`older`,
    `newer`). cachetools' LRUCache would keep a dict and an OrderedDict beside it: 87 to 141 bytes an
    entry where this takes 37 to 59, and a hit moves an entry in a third of the time.
    """

    def __init__(self, capacity: int, max_object_size: int) -> None:
        self.capacity = capacity
        self.max_object_size = min(max_object_size, capacity)
        self._entries: dict[str, Entry] = {}
        self._oldest: str | None = None  # the keys at the two ends of the LRU order
        self._newest: str | None = None
        self._bytes = 0  # the sizes of the entries in `_entries`
        # The indexes hold a lone member as itself, and a dict of them only from the second one on:
        # most tags have one entry, and an empty dict costs 200 bytes. A tag's keys are a dict (key ->
        # None), not a set: at 20,000 keys a set takes 105 bytes a key, a dict 21. An entry whose key is
        # its URL is found by that key: only a URL with Vary-selected variants is in `_variants`.
        self._variants: dict[str, str | dict[str, None]] = {}  # url -> the keys of its variants
        self._by_tag: dict[str, str | dict[str, None]] = {}  # tag -> the keys of its entries
        self.evictions = 0
        # Every purge gets a serial; a fetch notes the serial when it starts, and what it brings
        # back is not stored if a hard purge since then matches it (stored as already stale for
        # a soft one): no purged content re-enters through a fetch in flight during the purge.
        self.purge_serial = 0
        self._recent: deque[tuple[int, Callable[[Entry], bool], bool]] = deque(maxlen=RECENT_PURGES)
        # Version fences from purges: responses older than the fence for a URL, prefix or tag
        # are not stored (a lagging replica must not put back what a purge removed).
        self._fences: dict[tuple[str, str], tuple[int, float]] = {}  # (kind, value) -> (version, until)
        # Tag purges cost the same however many entries carry the tag: they mark the tag, entries
        # stored before the mark count as purged when next looked at, and a sweeper deletes them
        # in small steps (`sweep`) so a purge of 100,000 objects never blocks the event loop.
        self._tag_marks: dict[str, tuple[int, int]] = {}  # tag -> serial of its last hard, soft purge
        self._last_mark = 0  # the serial of the last tag purge: an entry with a later one need not be looked at
        self._to_sweep: deque[str] = deque()

    # -- reading --------------------------------------------------------------
    def peek(self, key: str) -> Entry | None:
        """The entry stored under `key`, as purges left it or not, without touching LRU order."""
        return self._entries.get(key)

    def url_keys(self, url: str) -> list[str]:
        """The keys of every stored variant of `url`."""
        keys = _members(self._variants, url)
        return [url, *keys] if url in self._entries else keys

    def variants(self, url: str) -> list[Entry]:
        """Every stored variant of `url` that purges left in place, without touching LRU order."""
        entries = [self._entries[key] for key in self.url_keys(url)]
        if not self._tag_marks:
            return entries
        return [e for e in entries if self.current(e) is not None]

    def only_variant(self, url: str) -> Entry | None:
        """The entry stored under `url` itself (a response without Vary) when it is the URL's only variant,
        as purges left it; else None."""
        found = self._entries.get(url)
        if found is None or url in self._variants:
            return None
        return found if found.serial >= self._last_mark else self.current(found)

    def tag_keys(self, tag: str) -> list[str]:
        """The keys of every stored entry carrying `tag`, hard-purged ones not yet swept included."""
        return _members(self._by_tag, tag)

    def current(self, entry: Entry) -> Entry | None:
        """`entry` as tag purges left it: None (and deleted) after a hard one, marked stale after a soft one.
        An entry looked at is not looked at again before the next tag purge (a hit after one pays once)."""
        if entry.serial < self._last_mark:
            for tag in entry.tags:
                marks = self._tag_marks.get(tag)
                if marks is not None:
                    if marks[0] > entry.serial:
                        self.delete(entry.key)
                        return None
                    if marks[1] > entry.serial:
                        entry.soft_purged = True
            entry.serial = self.purge_serial  # as if stored now: what the marks say of it is now in the entry
        return entry

    def touch(self, entry: Entry) -> None:
        """Mark `entry` as just used (LRU), if it is still stored."""
        if entry.newer is not None and self._entries.get(entry.key) is entry:  # stored, and not the newest
            self._unlink_order(entry)
            self._link_newest(entry)

    def get(self, key: str) -> Entry | None:
        """The entry stored under `key` as purges left it, made the most recently used."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self.touch(entry)
        return self.current(entry)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes accounted to stored entries."""
        return self._bytes

    def keys_for_tag(self, tag: str) -> frozenset[str]:
        """Keys of the entries carrying `tag` that purges left in place."""
        keys = self.tag_keys(tag)
        return frozenset(k for k in keys if (e := self._entries.get(k)) is not None and self.current(e) is not None)

    def tag_count(self) -> int:
        return len(self._by_tag)

    # -- writing --------------------------------------------------------------
    def fits(self, body_size: int) -> bool:
        return body_size <= self.max_object_size

    def put(self, entry: Entry, replaces: Iterable[Entry] = (), fetched_at: int | None = None) -> bool:
        """Store `entry` in place of `replaces`; False if too large. `fetched_at`: the purge serial when its fetch began."""
        if fetched_at is not None:
            purged = self.purged_since(fetched_at, entry)
            if purged == "hard":
                return False  # fetched before a purge that removed it: it may be what the purge removed
            entry.soft_purged = entry.soft_purged or purged == "soft"
        for old in replaces:
            self.delete(old.key)
        key = entry.key
        if key in self._entries:
            self.delete(key)
        tags = tuple(entry.tags)
        size = entry.charge(tags)
        if size > self.capacity or len(entry.body) > self.max_object_size:
            return False
        entry.serial = self.purge_serial
        while self._bytes + size > self.capacity:
            self._remove(self._entries[self._oldest])  # type: ignore[index]  # not empty: size <= capacity
            self.evictions += 1
        self._entries[key] = entry
        self._link_newest(entry)
        self._bytes += size
        untrack(entry)
        if VARIANT in key:
            _add_member(self._variants, entry.url, key)
        for tag in tags:
            _add_member(self._by_tag, tag, key)
        return True

    def delete(self, key: str) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._remove(entry)
        return True

    def _remove(self, entry: Entry) -> None:
        """Every way out (eviction, replacement, delete, purge) goes through here: the indexes stay exact.
        The entry's tags are read again (the request path's entries parse them from their fields)."""
        key = entry.key
        del self._entries[key]
        self._unlink_order(entry)
        tags = tuple(entry.tags)
        self._bytes -= entry.charge(tags)
        if VARIANT in key:
            _remove_member(self._variants, entry.url, key)
        for tag in tags:
            if _remove_member(self._by_tag, tag, key):
                self._tag_marks.pop(tag, None)  # later entries are stored after any mark anyway

    def _link_newest(self, entry: Entry) -> None:
        newest = self._newest
        entry.older, entry.newer = newest, None
        if newest is None:
            self._oldest = entry.key
        else:
            self._entries[newest].newer = entry.key
        self._newest = entry.key

    def _unlink_order(self, entry: Entry) -> None:
        older, newer = entry.older, entry.newer
        if older is None:
            self._oldest = newer
        else:
            self._entries[older].newer = newer
        if newer is None:
            self._newest = older
        else:
            self._entries[newer].older = older
        entry.older = entry.newer = None

    # -- version fences ---------------------------------------------------------
    def fence(self, kind: str, values: Iterable[str], version: int, until: float) -> None:
        """Refuse versions below `version` for these URLs / prefixes / tags (or everything) until `until`."""
        for value in values if kind != "all" else ("",):
            current = self._fences.get((kind, value))
            if current is None or current[0] < version or current[1] < until:
                self._fences[(kind, value)] = (max(version, current[0] if current else 0), until)
        if len(self._fences) > 100_000:
            self.expire_fences(0.0)

    def expire_fences(self, now: float) -> None:
        self._fences = {k: v for k, v in self._fences.items() if v[1] > now}

    def fenced(self, url: str, tags: Iterable[str], version: int, now: float) -> int | None:
        """The fence version that refuses a response of `version` for `url` with `tags`, if any."""
        if not self._fences:
            return None
        worst = None
        candidates = [("url", url), ("all", "")] + [("tag", t) for t in tags]
        candidates += [("prefix", v) for (kind, v) in self._fences if kind == "prefix" and url.startswith(v)]
        for key in candidates:
            fence = self._fences.get(key)
            if fence is not None and fence[1] > now and version < fence[0]:
                worst = max(worst or 0, fence[0])
        return worst

    # -- purging --------------------------------------------------------------
    def purged_since(self, serial: int, entry: Entry) -> str | None:
        """"hard" or "soft" if a purge applied after `serial` matches `entry` ("hard" when too long ago to tell)."""
        if serial >= self.purge_serial:
            return None
        if not self._recent or self._recent[0][0] > serial + 1:
            return "hard"
        found = None
        for s, matches, soft in reversed(self._recent):
            if s <= serial:
                break
            if matches(entry):
                if not soft:
                    return "hard"
                found = "soft"
        return found

    def _record(self, matches: Callable[[Entry], bool], soft: bool) -> None:
        self.purge_serial += 1
        self._recent.append((self.purge_serial, matches, soft))

    def _purge_keys(self, keys: Iterable[str], soft: bool) -> int:
        count = 0
        for key in list(keys):
            if soft:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.soft_purged = True
                    count += 1
            elif self.delete(key):
                count += 1
        return count

    def purge_url(self, url: str, soft: bool = False) -> int:
        """Every variant of one URL key."""
        self._record(lambda e: e.url == url, soft)
        return self._purge_keys(self.url_keys(url), soft)

    def purge_prefix(self, prefix: str, soft: bool = False) -> int:
        """Every URL key starting with `prefix`."""
        self._record(lambda e: e.url.startswith(prefix), soft)
        keys = [k for k in self._entries if k.startswith(prefix)]  # a variant's key starts with its URL
        return self._purge_keys(keys, soft)

    def purge_tags(self, tags: Iterable[str], soft: bool = False) -> int:
        """Every entry carrying any of `tags`: marked at once, deleted by `sweep` (the count is of entries tagged)."""
        tags = frozenset(tags)
        self._record(lambda e: not tags.isdisjoint(e.tags), soft)
        serial = self.purge_serial
        count = 0
        for tag in tags:
            keys = self.tag_keys(tag)
            if not keys:
                continue
            count += len(keys)
            hard_mark, soft_mark = self._tag_marks.get(tag, (0, 0))
            self._tag_marks[tag] = (hard_mark, serial) if soft else (serial, soft_mark)
            self._last_mark = serial
            if not soft:
                self._to_sweep.extend(keys)
        return count

    def sweep(self, budget: int = 1000) -> bool:
        """Delete up to `budget` entries hard tag purges removed; True while more remain."""
        for _ in range(min(budget, len(self._to_sweep))):
            entry = self._entries.get(self._to_sweep.popleft())
            if entry is not None:
                self.current(entry)
        return bool(self._to_sweep)

    def purge_all(self, soft: bool = False) -> int:
        self._record(lambda e: True, soft)
        if soft:
            return self._purge_keys(list(self._entries), soft=True)
        count = len(self._entries)
        self._entries = {}
        self._oldest = self._newest = None
        self._bytes = 0
        self._variants.clear()
        self._by_tag.clear()
        self._tag_marks.clear()
        self._to_sweep.clear()
        return count
