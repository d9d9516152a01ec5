"""The store: byte bound, LRU order, and URL / tag indexes that stay exact through every way out."""

from __future__ import annotations

import random
from collections import OrderedDict

from edge.store import ENTRY_OVERHEAD, Store, TaggedEntry


def entry(key: str, size: int = 100, tags: tuple[str, ...] = ()) -> TaggedEntry:
    return TaggedEntry(key=key, body=b"x" * size, tags=frozenset(tags))


def assert_indexes_exact(store: Store) -> None:
    """Every indexed key is stored, and every stored entry is indexed under its URL and each tag."""
    while store.sweep():
        pass
    stored = dict(store._entries)
    by_url = {k for url in store._variants for k in store.url_keys(url) if k != url}
    by_tag = {k for tag in store._by_tag for k in store.tag_keys(tag)}
    assert by_url == {k for k in stored if "\0" in k}  # only variants: a URL's own key finds its entry
    assert by_tag == {k for k, e in stored.items() if e.tags}
    for key, e in stored.items():
        assert key in store.url_keys(e.url)
        for tag in e.tags:
            assert key in store.tag_keys(tag)
    # No empty dict left behind, and none holding a lone member (held as itself).
    assert all(isinstance(keys, str) or len(keys) > 1 for keys in store._by_tag.values())
    assert all(isinstance(keys, str) or len(keys) > 1 for keys in store._variants.values())
    assert store.size == sum(e.size for e in stored.values())
    # The LRU order, walked from both ends, is every entry once.
    forward, key = [], store._oldest
    while key is not None:
        forward.append(key)
        key = stored[key].newer
    backward, key = [], store._newest
    while key is not None:
        backward.append(key)
        key = stored[key].older
    assert forward == backward[::-1] and sorted(forward) == sorted(stored)


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
    # A variant's key is the URL and more (Vary): the URL is held once more, in the index of variants.
    assert entry("/u\x00accept=json").size == entry("/u?accept=json").size + 2


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


def test_a_tagged_entry_keeps_the_tags_it_was_stored_with() -> None:
    # The store reads an entry's tags again when it removes it: a list changed since must not unbalance it.
    tags = ["a", "b", "b"]
    store = Store(1_000_000, 10_000)
    store.put(TaggedEntry(key="k", body=b"x", tags=tags))
    tags.clear()
    assert store.delete("k") and store.size == 0 and store._by_tag == {}
    assert_indexes_exact(store)


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
    assert store.peek("a") is None  # the stale one went first, not fresh "b"
    assert store.peek("b") is not None


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
    store.put(entry("h/a\x00lang=en"))
    store.put(entry("h/a\x00lang=fr"))
    store.put(entry("h/ab"))
    store.put(entry("h/b"))
    assert store.purge_url("h/a") == 2
    assert store.purge_prefix("h/a") == 1
    assert [e.key for e in store.variants("h/b")] == ["h/b"]
    assert_indexes_exact(store)


def test_purge_all_empties_store_and_indexes() -> None:
    store = Store(1_000_000, 10_000)
    for i in range(10):
        store.put(entry(f"k{i}", tags=("t",)))
    served = store.peek("k3")  # one being served while the purge comes: its links name entries gone
    assert store.purge_all() == 10
    assert len(store) == 0 and store.size == 0 and store.tag_count() == 0
    store.put(entry("again", tags=("t",)))
    store.put(entry("k4"))
    store.touch(served)  # not stored any more: nothing to move
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
    for step in range(3000):
        if step % 50 == 0:
            assert_indexes_exact(store)  # along the way too: a URL with its own entry and variants at once
        op = rng.random()
        n = rng.randrange(100)
        url = f"k{n // 10}"
        key = url if n % 10 == 0 else f"{url}\0v{n % 10}"  # ten URLs, each with variants
        if op < 0.6:
            store.put(entry(key, rng.randrange(1, 400), tuple(rng.sample(tags, rng.randrange(0, 3)))))
        elif op < 0.7:
            store.delete(key)
        elif op < 0.8:
            store.purge_tags(rng.sample(tags, 2), soft=rng.random() < 0.5)
        elif op < 0.85:
            store.purge_url(url)
        elif op < 0.9:
            store.purge_prefix(url)
        else:
            hit = store.get(key)
            if hit:
                store.touch(hit)
    assert_indexes_exact(store)


def test_a_lone_variant_or_tagged_entry_is_indexed_as_itself_and_a_second_one_makes_a_collection() -> None:
    store = Store(1 << 20, 1 << 20)
    first, second = entry("u\x00a", tags=("t",)), entry("u\x00b", tags=("t",))
    store.put(first)
    assert store.variants("u") == [first] and store._variants == {"u": "u\x00a"} and store._by_tag == {"t": "u\x00a"}
    store.put(second)
    assert {e.key for e in store.variants("u")} == {"u\x00a", "u\x00b"} and set(store.tag_keys("t")) == {"u\x00a", "u\x00b"}
    assert_indexes_exact(store)
    store.delete("u\x00a")
    assert store.variants("u") == [second] and store._variants == {"u": "u\x00b"} and store._by_tag == {"t": "u\x00b"}
    assert_indexes_exact(store)
    assert store.purge_tags(["t"]) == 1
    assert_indexes_exact(store)
    assert store.variants("u") == [] and store.tag_keys("t") == [] and len(store) == 0


def test_the_entry_a_url_keys_itself_is_its_only_variant_until_vary_selected_ones_join_it() -> None:
    # What the fast path serves: a response stored without Vary, under its URL, with no other variant
    # beside it (the full path chooses between variants).
    store = Store(1 << 20, 1 << 20)
    plain, varied = entry("u"), entry("u\x00accept=json")
    store.put(plain)
    assert store.only_variant("u") is plain and store._variants == {}  # found by its key: not indexed
    store.put(varied)
    assert store.only_variant("u") is None and {e.key for e in store.variants("u")} == {"u", "u\x00accept=json"}
    store.delete(varied.key)
    assert store.only_variant("u") is plain
    store.delete(plain.key)
    store.put(varied)
    assert store.only_variant("u") is None and store.variants("u") == [varied]  # a lone variant chosen by Vary


def test_the_order_of_eviction_is_exactly_least_recently_used() -> None:
    # Against a model LRU (an OrderedDict): puts, replacements, touches, gets and deletes in any order.
    rng = random.Random(11)
    capacity = 20
    store = Store(capacity * entry("k00").size, 10_000)
    model: OrderedDict[str, None] = OrderedDict()
    for _ in range(5000):
        key, op = f"k{rng.randrange(40):02d}", rng.random()
        if op < 0.5:
            store.put(entry(key))
            model.pop(key, None)
            model[key] = None
            if len(model) > capacity:
                model.popitem(last=False)
        elif op < 0.9:
            found = store.peek(key)
            if found is not None and op < 0.7:
                store.touch(found)
            elif found is not None:
                store.get(key)
            if found is not None:
                model.move_to_end(key)
        else:
            store.delete(key)
            model.pop(key, None)
        assert len(store) == len(model)
    assert_indexes_exact(store)
    order, key = [], store._oldest
    while key is not None:
        order.append(key)
        key = store.peek(key).newer
    assert order == list(model)
