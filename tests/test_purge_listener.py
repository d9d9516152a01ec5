"""The edge's purge listener against the in-process log: order, gaps, resets, fences."""

from __future__ import annotations

import time

from edge.purge_listener import PurgeListener
from edge.store import Store, TaggedEntry
from purge_api.log import EdgeInfo, MemoryPurgeLog, Purge


def tagged(key: str, tag: str) -> TaggedEntry:
    return TaggedEntry(key=key, body=b"x", tags=frozenset({tag}))


def listener_for(log: MemoryPurgeLog, store: Store) -> PurgeListener:
    return PurgeListener(log, store, EdgeInfo(id="e"), heartbeat_interval=0.05)


def purge(i: int, tag: str, version: int | None = None) -> Purge:
    return Purge(id=f"p{i}", kind="tag", values=(tag,), created_at=time.time(), version=version)


async def test_purges_are_applied_in_order_and_acknowledged() -> None:
    log, store = MemoryPurgeLog(), Store(1_000_000, 10_000)
    listener = listener_for(log, store)
    await listener.sync()
    store.put(tagged("a", "t"))
    await log.append(purge(1, "t"))
    await listener.apply(await log.read(listener.position, block=0.1))
    assert store.get("a") is None
    assert "e" in await log.acks("p1")
    assert listener.appended == 1


async def test_an_edge_that_falls_behind_a_trimmed_log_while_reading_empties_its_cache() -> None:
    # The purges it would skip include one for "victim": it must not keep serving that entry.
    log, store = MemoryPurgeLog(maxlen=100), Store(1_000_000, 10_000)
    listener = listener_for(log, store)
    await listener.sync()
    store.put(tagged("victim-entry", "victim"))
    store.put(tagged("bystander", "other"))
    await log.append(purge(0, "victim"))
    for i in range(1, 500):
        await log.append(purge(i, f"noise-{i}"))
    await listener.apply(await log.read(listener.position, block=0.1))
    assert store.get("victim-entry") is None
    assert store.get("bystander") is None  # emptied: what was skipped cannot be known


async def test_a_log_that_started_over_is_noticed_at_the_next_sync() -> None:
    log, store = MemoryPurgeLog(), Store(1_000_000, 10_000)
    listener = listener_for(log, store)
    await listener.sync()
    store.put(tagged("a", "t"))
    listener.log = MemoryPurgeLog()  # the same address, its data gone: a new epoch
    await listener.sync()
    assert store.get("a") is None


async def test_a_restarted_edge_takes_version_fences_from_the_log() -> None:
    log = MemoryPurgeLog()
    await log.append(purge(1, "product-7", version=5))
    store = Store(1_000_000, 10_000)
    await listener_for(log, store).sync()
    assert store.fenced("shop/p/7", ["product-7"], 4, time.time()) == 5
    assert store.fenced("shop/p/7", ["product-7"], 5, time.time()) is None


def test_a_purge_survives_the_log_entry_with_every_field() -> None:
    import dataclasses
    import json

    purge = Purge(id="p-1", kind="tag", values=("a", "b"), soft=True, created_at=1.5, version=7, fenced=("a",),
                  event="product.updated", seq=12)
    fields = purge.to_fields()
    assert {f.name for f in dataclasses.fields(Purge)} == set(json.loads(fields["purge"])) | {"seq"}
    assert Purge.from_fields({**fields, "seq": "12"}) == purge
