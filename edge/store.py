"""The cache store: a byte-bounded LRU of entries with a URL index and a tag index kept in step.

The store knows keys, sizes, URLs and tags; what an entry means in HTTP is the
request path's business. Every way an entry leaves (eviction, replacement,
delete, purge) goes through `_unlink`, so the indexes stay exact.
"""

from __future__ import annotations

import ctypes
import math
import sys
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from cachetools import Cache, LRUCache

# What an entry costs in memory beyond its body, key text and fields, as measured through the edge's own
# miss path (tests/test_store_memory.py keeps these at or above the real cost, memory_bench.py shows RSS):
# per entry the Entry (the request path's Stored: freshness and fields in the same object), its key's
# and body's object headers, the LRU's links and the URL index; per tag, its index entry and its share
# of a tag's keys. Both allow for the indexes' dicts having just grown (a dict key costs 21 to 60 bytes).
ENTRY_OVERHEAD = 540  # about 400 traced, 510 of RSS (the allocator's rounding), at 20,000 entries
TAG_OVERHEAD = 140  # a tag only this entry carries: its string (49 + length), an index key, a tuple slot
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
# tuples of them, so it can never be part of a reference cycle, and a full collection, which holds every
# request while it runs, would otherwise visit every entry (at 100,000 entries, 100 ms instead of 25).
# Reference counting frees it as before.
untrack = _untracker()

# Purges remembered to judge responses that were being fetched while they were applied.
RECENT_PURGES = 4096


@dataclass(slots=True, eq=False, kw_only=True)
class Entry:
    """One stored response variant. The request path's subclass (`edge.app.Stored`) adds what it means
    in HTTP: status, freshness, fields. One object per entry, not an entry and its metadata: each costs
    its header and the garbage collector's. Its slots hold only strings, bytes, numbers and tuples of
    them (the store takes it out of the cycle collector's sight: see `untrack`)."""

    key: str  # unique per variant
    url: str  # the URL key all variants of a resource share
    body: bytes
    tags: Collection[str] = ()  # a tuple: a frozenset of two costs 216 bytes, a tuple 56
    soft_purged: bool = False
    serial: int = 0  # the store's purge serial when it was stored, or last looked at against tag purges

    def fields_size(self) -> int:
        """Memory its header fields take (the subclass that keeps fields says)."""
        return 0

    @property
    def size(self) -> int:
        """What the store charges for it: worked out when asked, not kept (an int of its own is 28 bytes).
        Nothing it is made of changes while it is stored."""
        keys = len(self.key) if self.key is self.url else len(self.key) + len(self.url)
        return (len(self.body) + keys + self.fields_size() + ENTRY_OVERHEAD
                + sum(TAG_OVERHEAD + len(t) for t in self.tags))


class _LRU(LRUCache):
    """cachetools' LRU, for its order only: the store counts the bytes itself (cachetools would keep each
    entry's size in a dict of its own, an entry and an int each) and evicts through `popitem`."""

    def __init__(self) -> None:
        super().__init__(math.inf)

    def peek(self, key: str) -> Entry | None:
        """The entry without making it the most recently used."""
        return Cache.__getitem__(self, key) if key in self else None


class Store:
    """Entries bounded by total bytes, with `url -> keys` and `tag -> keys` indexes."""

    def __init__(self, capacity: int, max_object_size: int) -> None:
        self.capacity = capacity
        self.max_object_size = min(max_object_size, capacity)
        self._lru = _LRU()
        self._bytes = 0  # the sizes of the entries in `_lru`
        # The indexes hold a lone member as itself, and a dict of them only from the second one on:
        # most URLs have one variant and many tags one entry, and an empty dict costs 200 bytes. A tag's
        # keys are a dict (key -> None), not a set: at 20,000 keys a set takes 105 bytes a key, a dict 21.
        self._by_url: dict[str, Entry | dict[str, Entry]] = {}  # url -> its variant, or key -> variant
        self._by_tag: dict[str, str | dict[str, None]] = {}  # tag -> the key of its entry, or the keys
        # A tag several entries carry -> the one string they all hold, not a copy each from parsing
        # (not sys.intern: early CPython 3.12 releases never free an interned string, python/cpython#113993).
        self._tag_names: dict[str, str] = {}
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
    def variants(self, url: str) -> list[Entry]:
        """Every stored variant of `url` that purges left in place, without touching LRU order."""
        found = self._by_url.get(url)
        if found is None:
            return []
        entries = [found] if isinstance(found, Entry) else list(found.values())
        if not self._tag_marks:
            return entries
        return [e for e in entries if self.current(e) is not None]

    def only_variant(self, url: str) -> Entry | None:
        """The stored entry of `url` when it is the only variant purges left in place, else None."""
        found = self._by_url.get(url)
        if not isinstance(found, Entry):
            return None
        return found if found.serial >= self._last_mark else self.current(found)

    def url_keys(self, url: str) -> list[str]:
        """The keys of every stored variant of `url`."""
        found = self._by_url.get(url)
        if found is None:
            return []
        return [found.key] if isinstance(found, Entry) else list(found)

    def tag_keys(self, tag: str) -> list[str]:
        """The keys of every stored entry carrying `tag`, hard-purged ones not yet swept included."""
        found = self._by_tag.get(tag)
        if found is None:
            return []
        return [found] if isinstance(found, str) else list(found)

    def current(self, entry: Entry) -> Entry | None:
        """`entry` as tag purges left it: None (and deleted) after a hard one, marked stale after a soft one.
        An entry looked at is not looked at again before the next tag purge (a hit after one pays once)."""
        if entry.serial < self._last_mark and entry.tags:
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
        """Mark `entry`, a stored one, as just used (LRU)."""
        self._lru[entry.key]  # LRUCache.__getitem__ moves it to the end

    def get(self, key: str) -> Entry | None:
        entry = self._lru.get(key)
        return self.current(entry) if entry is not None else None

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def size(self) -> int:
        """Bytes accounted to stored entries."""
        return self._bytes

    def keys_for_tag(self, tag: str) -> frozenset[str]:
        """Keys of the entries carrying `tag` that purges left in place."""
        keys = self.tag_keys(tag)
        return frozenset(k for k in keys if (e := self._lru.peek(k)) is not None and self.current(e) is not None)

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
        if entry.key in self._lru:
            self.delete(entry.key)
        size = entry.size
        if size > self.capacity or len(entry.body) > self.max_object_size:
            return False
        entry.serial = self.purge_serial
        while self._bytes + size > self.capacity:
            _, evicted = self._lru.popitem()  # the least recently used
            self._bytes -= evicted.size
            self._unlink(evicted)
        self._lru[entry.key] = entry
        self._bytes += size
        untrack(entry)
        variants = self._by_url.get(entry.url)
        if variants is None:
            self._by_url[entry.url] = entry
        elif isinstance(variants, Entry):
            self._by_url[entry.url] = {variants.key: variants, entry.key: entry}  # keys differ: replaced ones left
        else:
            variants[entry.key] = entry
        if entry.tags:
            entry.tags = tuple(self._index_tag(tag, entry.key) for tag in entry.tags)
        return True

    def _index_tag(self, tag: str, key: str) -> str:
        """Add `key` to `tag`'s keys; the tag as entries should hold it (one string for a tag many entries carry)."""
        keys = self._by_tag.get(tag)
        if keys is None:
            self._by_tag[tag] = key
            return tag
        if isinstance(keys, str):
            self._by_tag[tag] = {keys: None, key: None}
        else:
            keys[key] = None
        return self._tag_names.setdefault(tag, tag)

    def delete(self, key: str) -> bool:
        entry = self._lru.peek(key)
        if entry is None:
            return False
        del self._lru[key]
        self._bytes -= entry.size
        self._unlink(entry, evicted=False)
        return True

    def _unlink(self, entry: Entry, evicted: bool = True) -> None:
        if evicted:
            self.evictions += 1
        variants = self._by_url.get(entry.url)
        if variants is entry:
            del self._by_url[entry.url]
        elif isinstance(variants, dict) and variants.get(entry.key) is entry:
            del variants[entry.key]
            if len(variants) == 1:
                self._by_url[entry.url] = next(iter(variants.values()))
        for tag in entry.tags:
            tagged = self._by_tag.get(tag)
            if isinstance(tagged, dict):
                tagged.pop(entry.key, None)
                if len(tagged) == 1:
                    self._by_tag[tag] = next(iter(tagged))
                    self._tag_names.pop(tag, None)
            elif tagged == entry.key:
                del self._by_tag[tag]
                self._tag_marks.pop(tag, None)  # later entries are stored after any mark anyway

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
                entry = self._lru.peek(key)
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
        keys = [k for url in self._by_url if url.startswith(prefix) for k in self.url_keys(url)]
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
            entry = self._lru.peek(self._to_sweep.popleft())
            if entry is not None:
                self.current(entry)
        return bool(self._to_sweep)

    def purge_all(self, soft: bool = False) -> int:
        self._record(lambda e: True, soft)
        if soft:
            return self._purge_keys(list(self._lru.keys()), soft=True)
        count = len(self._lru)
        self._lru = _LRU()
        self._bytes = 0
        self._by_url.clear()
        self._by_tag.clear()
        self._tag_names.clear()
        self._tag_marks.clear()
        self._to_sweep.clear()
        return count
