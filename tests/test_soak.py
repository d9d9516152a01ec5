"""The soak (benchmarks/soak.py) for 20 seconds: the 10-minute run's processes, traffic, purges and invariants."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import (
    MIB,
    ProductRead,
    PurgeRecord,
    SoakConfig,
    check_consistency,
    run_soak,
)


def test_a_short_soak_keeps_every_invariant(tmp_path: Path) -> None:
    """Steady mixed traffic with purges: no errors, no purge lost, nothing stale after an ack,
    memory within the cache bound, no connection or task left behind."""
    config = SoakConfig(duration=20, rate=100, cache_size=4 * MIB, sample_interval=4, warmup=8, idle_wait=3,
                        progress=False)
    result, table = run_soak(config, tmp_path)
    assert result.errors == 0, table
    assert result.purges_sent > 20 and result.purges_lost == 0, table
    assert result.stale == [], table
    assert result.reads_checked > 0, table  # the consistency check had answers to judge
    assert all(s["store"]["evictions"] > 0 for s in result.end().edges.values()), table
    assert result.failures == [], table


def _purge(version: int, soft: bool, acked_at: float) -> PurgeRecord:
    return PurgeRecord(id=f"p{version}", kind="tag", soft=soft, product=7, version=version,
                       applied={"edge-0": acked_at})


@pytest.mark.parametrize(("read", "stale"), [
    (ProductRead("edge-0", 7, sent=9.0, version=1, stale=False), False),  # before the ack: anything goes
    (ProductRead("edge-0", 7, sent=11.0, version=2, stale=False), False),
    (ProductRead("edge-0", 7, sent=11.0, version=1, stale=False), True),
    (ProductRead("edge-0", 7, sent=11.0, version=1, stale=True), True),  # a hard purge allows no stale copy
    (ProductRead("edge-1", 7, sent=11.0, version=1, stale=False), False),  # another edge had not acked
    (ProductRead("edge-0", 8, sent=11.0, version=1, stale=False), False),  # another product
])
def test_an_answer_older_than_an_acknowledged_hard_purge_is_stale(read: ProductRead, stale: bool) -> None:
    found = check_consistency([read], [_purge(2, soft=False, acked_at=10.0)])
    assert bool(found.stale) == stale


def test_after_a_soft_purge_an_older_answer_is_allowed_only_when_marked_stale() -> None:
    purges = [_purge(2, soft=True, acked_at=10.0)]
    marked = check_consistency([ProductRead("edge-0", 7, 11.0, 1, stale=True)], purges)
    unmarked = check_consistency([ProductRead("edge-0", 7, 11.0, 1, stale=False)], purges)
    assert (marked.stale, marked.stale_allowed, marked.checked) == ([], 1, 1)
    assert len(unmarked.stale) == 1


def test_a_later_soft_purge_does_not_excuse_what_an_earlier_hard_one_removed() -> None:
    purges = [_purge(2, soft=False, acked_at=10.0), _purge(3, soft=True, acked_at=12.0)]
    assert check_consistency([ProductRead("edge-0", 7, 13.0, 2, stale=True)], purges).stale == []
    assert len(check_consistency([ProductRead("edge-0", 7, 13.0, 1, stale=True)], purges).stale) == 1
