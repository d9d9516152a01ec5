"""The store: byte bound, LRU order, and URL / tag indexes that stay exact through every way out."""

from __future__ import annotations

import random

from edge.store import ENTRY_OVERHEAD, Entry, Store


def entry(key: str, size: int = 100, tags: tuple[str, ...] = (), url: str | None = None) -> Entry:
    return Entry(key=key, url=url or key, body=b"x" * size, tags=frozenset(tags))


def assert_indexes_exact(store: Store) -> None:
    """Every indexed key is stored, and every stored entry is indexed under its URL and each tag."""
    while store.sweep():
        pass
    stored = {key: store._lru.peek(key) for key in list(store._lru.keys())}
    by_url = {k for url in store._by_url for k in store.url_keys(url)}
    by_tag = {k for tag in store._by_tag for k in store.tag_keys(tag)}
    assert by_url == set(stored)
    assert by_tag == {k for k, e in stored.items() if e.tags}
    for key, e in stored.items():
        assert key in store.url_keys(e.url)
        for tag in e.tags:
            assert key in store.tag_keys(tag)
    # No empty set or dict left behind, and none holding a lone member (held as itself).
    assert all(isinstance(keys, str) or len(keys) > 1 for keys in store._by_tag.values())
    assert all(isinstance(found, Entry) or len(found) > 1 for found in store._by_url.values())
    # One shared string is remembered for each tag several entries carry, and for no other.
    assert set(store._tag_names) == {tag for tag, keys in store._by_tag.items() if not isinstance(keys, str)}
    assert store.size == sum(e.size for e in stored.values())


def test_total_size_never_exceeds_capacity() -> None:
    capacity = 10 * entry("k00", 1000).size
    store = Store(capacity, capacity)
    for i in range(50):
        store.put(entry(f"k{i}", 1000))
        assert store.size <= capacity
    assert len(store) == 10


def test_least_recently_used_entry_is_evicted_first() -> None:
    store = Store(3 * entry("a").size, 10_000)
    for key in ("a", "b", "c"):
        store.put(entry(key))
    store.touch(store.get("a"))
    store.put(entry("d"))
    assert store.get("b") is None
    assert {k for k in ("a", "c", "d") if store.get(k)} == {"a", "c", "d"}
    assert store.evictions == 1


def test_an_entry_is_charged_its_keys_text() -> None:
    # A long URL costs what it holds: 2,000 bytes of query string are not free beside a tiny body.
    assert entry("k" * 2001).size - entry("k").size == 2000
    assert entry("a", 0).size == ENTRY_OVERHEAD + 1
    # A variant's key is the URL and more (Vary): both are held.
    assert entry("/u\x00accept=json", url="/u").size == entry("/u\x00accept=json").size + 2


def test_objects_over_the_size_cap_are_refused() -> None:
    store = Store(1_000_000, 500)
    assert not store.put(entry("big", 501))
    assert store.put(entry("small", 500))
    assert not store.fits(501)


def test_tag_index_is_exact_through_eviction() -> None:
    store = Store(5 * entry("probe", tags=("t1", "u0")).size, 10_000)
    for i in range(20):
        store.put(entry(f"k{i}", tags=("t1", f"u{i % 3}")))
        assert_indexes_exact(store)
    assert store.keys_for_tag("t1") == {f"k{i}" for i in range(15, 20)}


def test_tag_index_is_exact_through_replacement() -> None:
    store = Store(1_000_000, 10_000)
    store.put(entry("k", tags=("old", "both")))
    store.put(entry("k", tags=("new", "both")))
    assert store.keys_for_tag("old") == frozenset()
    assert store.keys_for_tag("new") == {"k"}
    assert_indexes_exact(store)


def test_a_tag_purge_marks_at_once_and_the_sweep_deletes_in_steps() -> None:
    store = Store(100_000_000, 10_000)
    for i in range(5000):
        store.put(entry(f"k{i}", tags=("all", f"t{i}")))
    store.put(entry("other", tags=("keep",)))
    assert store.purge_tags(["all"]) == 5000
    assert store.get("k7") is None  # gone for lookups before any sweep
    assert store.variants("k8") == []
    assert store.sweep(budget=1000)  # more to do
    while store.sweep(budget=1000):
        pass
    assert len(store) == 1 and store.get("other") is not None
    assert_indexes_exact(store)


def test_entries_stored_after_a_tag_purge_are_not_affected_by_it() -> None:
    store = Store(1_000_000, 10_000)
    store.put(entry("old", tags=("t",)))
    store.purge_tags(["t"])
    store.put(entry("new", tags=("t",)))
    assert store.get("old") is None
    assert store.get("new") is not None
    assert store.keys_for_tag("t") == {"new"}


def test_soft_purge_does_not_make_entries_most_recently_used() -> None:
    store = Store(3 * entry("probe", tags=("t",)).size, 10_000)
    store.put(entry("a", tags=("t",)))
    store.put(entry("b", tags=("u",)))
    store.put(entry("c", tags=("u",)))
    store.purge_url("a", soft=True)
    store.put(entry("d", tags=("u",)))
    assert store._lru.peek("a") is None  # the stale one went first, not fresh "b"
    assert store._lru.peek("b") is not None


def test_purge_by_tag_removes_exactly_the_tagged_entries() -> None:
    store = Store(1_000_000, 10_000)
    store.put(entry("a", tags=("x",)))
    store.put(entry("b", tags=("x", "y")))
    store.put(entry("c", tags=("y",)))
    assert store.purge_tags(["x"]) == 2
    assert store.get("a") is None and store.get("b") is None and store.get("c") is not None
    assert_indexes_exact(store)


def test_soft_purge_marks_entries_without_removing_them() -> None:
    store = Store(1_000_000, 10_000)
    store.put(entry("a", tags=("x",)))
    assert store.purge_tags(["x"], soft=True) == 1
    assert store.get("a").soft_purged
    assert_indexes_exact(store)


def test_purge_url_removes_every_variant_and_prefix_matches_url_keys() -> None:
    store = Store(1_000_000, 10_000)
    store.put(entry("h/a\x00lang=en", url="h/a"))
    store.put(entry("h/a\x00lang=fr", url="h/a"))
    store.put(entry("h/ab", url="h/ab"))
    store.put(entry("h/b", url="h/b"))
    assert store.purge_url("h/a") == 2
    assert store.purge_prefix("h/a") == 1
    assert [e.key for e in store.variants("h/b")] == ["h/b"]
    assert_indexes_exact(store)


def test_purge_all_empties_store_and_indexes() -> None:
    store = Store(1_000_000, 10_000)
    for i in range(10):
        store.put(entry(f"k{i}", tags=("t",)))
    assert store.purge_all() == 10
    assert len(store) == 0 and store.size == 0 and store.tag_count() == 0
    store.put(entry("again", tags=("t",)))
    assert_indexes_exact(store)


class CountingMarks(dict):
    """The store's tag marks, counting how often an entry's tags are looked up in them."""

    lookups = 0

    def get(self, *args):
        self.lookups += 1
        return super().get(*args)


def test_a_hit_after_a_tag_purge_looks_at_the_marks_once_not_on_every_hit() -> None:
    # A mark stays until its tag's last entry leaves: the entries stored before it must not pay for it forever.
    store = Store(1 << 20, 1 << 20)
    store.put(entry("a", tags=("t",)))
    store.put(entry("b", tags=("u", "v")))
    store._tag_marks = marks = CountingMarks()
    store.purge_tags(["t"])
    marks.lookups = 0
    assert [store.only_variant("b") is not None for _ in range(3)] == [True] * 3
    assert marks.lookups == 2  # b's two tags, once
    store.purge_tags(["v"], soft=True)
    marks.lookups = 0
    assert store.only_variant("b").soft_purged and store.only_variant("b").soft_purged
    assert marks.lookups == 2
    assert store.only_variant("a") is None  # the first purge's entry is gone, however often asked
    store.purge_tags(["u"])
    assert store.only_variant("b") is None


def test_indexes_stay_exact_under_random_operations() -> None:
    rng = random.Random(7)
    store = Store(40 * (200 + ENTRY_OVERHEAD), 10_000)
    tags = [f"t{i}" for i in range(8)]
    for _ in range(3000):
        op = rng.random()
        key = f"k{rng.randrange(100)}"
        if op < 0.6:
            store.put(entry(key, rng.randrange(1, 400), tuple(rng.sample(tags, rng.randrange(0, 3))), url=key[:2]))
        elif op < 0.7:
            store.delete(key)
        elif op < 0.8:
            store.purge_tags(rng.sample(tags, 2), soft=rng.random() < 0.5)
        elif op < 0.85:
            store.purge_url(key[:2])
        elif op < 0.9:
            store.purge_prefix(key[:2])
        else:
            hit = store.get(key)
            if hit:
                store.touch(hit)
    assert_indexes_exact(store)


def test_a_lone_variant_or_tagged_entry_is_indexed_as_itself_and_a_second_one_makes_a_collection() -> None:
    store = Store(1 << 20, 1 << 20)
    first, second = entry("u\x00a", url="u", tags=("t",)), entry("u\x00b", url="u", tags=("t",))
    store.put(first)
    assert store.only_variant("u") is first and store.tag_keys("t") == ["u\x00a"]
    store.put(second)
    assert store.only_variant("u") is None  # two variants: the full path chooses
    assert {e.key for e in store.variants("u")} == {"u\x00a", "u\x00b"} and set(store.tag_keys("t")) == {"u\x00a", "u\x00b"}
    assert_indexes_exact(store)
    store.delete("u\x00a")
    assert store.only_variant("u") is second and store.tag_keys("t") == ["u\x00b"]
    assert_indexes_exact(store)
    assert store.purge_tags(["t"]) == 1
    assert_indexes_exact(store)
    assert store.variants("u") == [] and store.tag_keys("t") == [] and len(store) == 0
