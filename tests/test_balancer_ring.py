"""The hash ring: stable across processes, balanced by weight, and moving only about 1/N of keys when N changes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.ring import HashRing, stable_hash
from tests.servers import ROOT

KEYS = [f"/static/{i}.css?v={i % 7}" for i in range(10_000)]


def ring_of(n: int, **weights: int) -> HashRing:
    return HashRing({f"http://origin-{i}": 1 for i in range(n)} | weights)


def placement(ring: HashRing) -> dict[str, str | None]:
    return {key: ring.lookup(key) for key in KEYS}


def test_hash_is_the_same_in_every_process() -> None:
    code = "from balancer.ring import stable_hash; print(stable_hash('/index.html'), hash('/index.html'))"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.split() for seed in ("1", "2")]
    assert runs[0][0] == runs[1][0] == str(stable_hash("/index.html"))
    assert runs[0][1] != runs[1][1]  # what hash() would have done


def test_a_key_always_maps_to_the_same_node() -> None:
    assert placement(ring_of(5)) == placement(ring_of(5))


@pytest.mark.parametrize("n", range(4, 11))
def test_nodes_get_about_equal_shares(n: int) -> None:
    counts = Counter(placement(ring_of(n)).values())
    assert len(counts) == n
    for count in counts.values():
        assert count / len(KEYS) == pytest.approx(1 / n, abs=0.05)


def test_weights_are_honoured_by_virtual_node_count() -> None:
    counts = Counter(placement(HashRing({"heavy": 3, "light": 1})).values())
    assert counts["heavy"] / len(KEYS) == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("n", range(4, 11))
def test_adding_one_of_n_nodes_moves_about_one_nth_of_keys_all_to_the_new_node(n: int) -> None:
    before = placement(ring_of(n - 1))
    after = placement(ring_of(n))
    moved = {key for key in KEYS if before[key] != after[key]}
    assert len(moved) / len(KEYS) == pytest.approx(1 / n, abs=0.05)
    assert {after[key] for key in moved} == {f"http://origin-{n - 1}"}


@pytest.mark.parametrize("n", range(4, 11))
def test_removing_one_of_n_nodes_moves_only_its_keys(n: int) -> None:
    before = placement(ring_of(n))
    gone = "http://origin-2"
    after = placement(HashRing({f"http://origin-{i}": 1 for i in range(n) if f"http://origin-{i}" != gone}))
    moved = {key for key in KEYS if before[key] != after[key]}
    assert len(moved) / len(KEYS) == pytest.approx(1 / n, abs=0.05)
    assert moved == {key for key in KEYS if before[key] == gone}


@given(st.sets(st.integers(0, 7), max_size=7), st.lists(st.text(max_size=20), min_size=1, max_size=30))
def test_skipping_ineligible_nodes_is_the_same_as_removing_them(down: set[int], keys: list[str]) -> None:
    nodes = [f"n{i}" for i in range(8)]
    full = HashRing({node: 1 for node in nodes}, vnodes=20)
    survivors = HashRing({node: 1 for i, node in enumerate(nodes) if i not in down}, vnodes=20)
    down_names = {f"n{i}" for i in down}
    for key in keys:
        assert full.lookup(key, lambda node: node not in down_names) == survivors.lookup(key)


def test_no_node_or_no_eligible_node_gives_none() -> None:
    assert HashRing({}).lookup("/a") is None
    assert ring_of(3).lookup("/a", lambda node: False) is None
