"""The store charges each entry at least the memory it really takes, so `cache_size` bounds the process.

Entries are built through the edge's own miss path (`make_entry`, `put`) and measured with tracemalloc.
"""

from __future__ import annotations

import dataclasses
import gc
import time
import tracemalloc
from collections.abc import Callable

import pytest

from edge.app import ClientRequest, Edge
from edge.headers import Headers
from edge.settings import EdgeSettings

ENTRIES = 2000


def entry_storer(fields: int, body_size: int, tags: int) -> tuple[Edge, Callable[[int], int]]:
    """An edge, and a function that stores entry `number` of this shape in it and returns its charged size."""
    settings = EdgeSettings(cache_size=1 << 40, access_log=False, metrics=False)
    edge = Edge(settings)
    now = time.time()

    def one(number: int) -> int:
        path = f"/objects/{number:06d}"
        request = ClientRequest.from_scope({"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                                            "query_string": b"", "client": ("127.0.0.1", 1),
                                            "headers": [(b"host", b"shop.example"), (b"accept", b"*/*")]}, settings)
        raw = [(b"cache-control", b"public, max-age=3600"), (b"content-type", b"application/json"),
               (b"etag", f'"{number:016x}"'.encode())]
        raw += [(f"x-extra-{i}".encode(), f"value {number} {i}".encode()) for i in range(fields - len(raw))]
        if tags:
            raw.append((b"surrogate-key", " ".join(["products", *(f"item-{number}-{i}" for i in range(tags - 1))]).encode()))
        # Fetched in 0.4 ms: the delay is in the entry's initial age, a float of its own, as in real traffic.
        entry = edge.make_entry(request, 200, Headers.from_raw(raw), bytes(bytearray(body_size)), now - 0.0004, now)
        assert edge.put(request, entry, None, edge.store.purge_serial)
        return entry.size

    return edge, one


def store_entries(fields: int, body_size: int, tags: int, count: int = ENTRIES) -> tuple[float, float]:
    """(traced bytes per entry, charged bytes per entry) for `count` entries of this shape."""
    edge, one = entry_storer(fields, body_size, tags)
    one(-1)  # module-level caches warmed outside the measurement
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        charged = sum(one(n) for n in range(count))
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(edge.store) == count + 1
    return traced / count, charged / count


@pytest.mark.parametrize(("fields", "body_size", "tags"), [
    (3, 0, 0),      # a tiny response
    (8, 100, 2),    # an API answer with its tags
    (20, 1024, 6),  # many fields, many tags
    (40, 0, 0),     # header-heavy
])
def test_the_store_charges_at_least_what_an_entry_takes_and_not_much_more(fields: int, body_size: int,
                                                                          tags: int) -> None:
    traced, charged = store_entries(fields, body_size, tags)
    print(f"fields={fields} body={body_size} tags={tags}: traced {traced:.0f} B, charged {charged:.0f} B")
    assert traced <= charged, f"an entry takes {traced:.0f} B but is charged {charged:.0f} B"
    assert charged <= 1.5 * traced, f"an entry takes {traced:.0f} B but is charged {charged:.0f} B"


def test_a_tag_many_entries_carry_costs_each_one_index_key_and_its_field_text() -> None:
    # The tag's string is held once, by the tag index; an entry reads its tags from its fields and holds
    # no tuple of them; the tag's keys are a dict, not a set (105 bytes a key at this count).
    untagged, _ = store_entries(fields=3, body_size=0, tags=0, count=4000)
    tagged, _ = store_entries(fields=3, body_size=0, tags=1, count=4000)
    print(f"untagged {untagged:.0f} B, with a shared tag {tagged:.0f} B")
    field_text = len(b"surrogate-key\0products\0")
    assert tagged - untagged < field_text + 40  # measured: 48 (the text and an index key); with a tuple each, 96


def test_a_stored_entry_is_no_object_the_garbage_collector_visits() -> None:
    # A full collection visits every object it tracks, and stalls every request while it does: with an
    # entry and its metadata as two objects, 88 ms at 100,000 entries. Freshness and fields live in the
    # entry, which the store untracks (it holds no container that could close a cycle); its tags' tuple,
    # of strings only, is untracked by the first collection it meets.
    edge, one = entry_storer(fields=8, body_size=100, tags=2)
    for number in range(-ENTRIES, 0):
        one(number)
    gc.collect()
    before = len(gc.get_objects())
    for number in range(ENTRIES):
        one(number)
    gc.collect()
    per_entry = (len(gc.get_objects()) - before) / ENTRIES
    assert len(edge.store) == 2 * ENTRIES
    assert per_entry <= 0.01, f"{per_entry:.2f} tracked objects per stored entry"
    stored = next(iter(edge.store._entries.values()))
    assert stored is not None and not gc.is_tracked(stored)


def test_an_entry_holds_nothing_that_could_close_a_reference_cycle() -> None:
    # What lets the store untrack entries: a slot holding a list, dict or object could reach back to
    # the entry, and a cycle the collector does not see is never freed.
    def atomic(value: object) -> bool:
        if isinstance(value, tuple):
            return all(atomic(v) for v in value)
        if dataclasses.is_dataclass(value) and value.__dataclass_params__.frozen:  # the shared ReuseRules
            return all(atomic(getattr(value, f.name)) for f in dataclasses.fields(value))
        return value is None or isinstance(value, str | bytes | int | float)

    edge, one = entry_storer(fields=8, body_size=100, tags=2)
    one(1)
    stored = next(iter(edge.store._entries.values()))
    slots = [name for cls in type(stored).__mro__ for name in getattr(cls, "__slots__", ())]
    assert {"key", "older", "newer", "fields", "lifetime"} <= set(slots)
    assert all(atomic(getattr(stored, name)) for name in slots), {name: getattr(stored, name) for name in slots}
