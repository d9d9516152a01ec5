"""The balancer's pure parts: settings, algorithms, picking, request tracking, passive ejection, health hysteresis."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer import Failure, LoadReport, Member, OriginPool, PoolSettings, failure_of
from balancer.settings import AlgorithmName
from cdn.config import ServiceSettings, SettingsError, load_settings

ALGORITHMS: list[AlgorithmName] = [
    "round_robin", "weighted_round_robin", "least_connections", "least_response_time", "resource_based", "consistent_hash"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_pool(algorithm: AlgorithmName = "round_robin", weights: dict[str, int] | None = None,
              clock: FakeClock | None = None, **settings: Any) -> OriginPool:
    """A pool of http://a, http://b, ... (or the given name → weight) without background checks."""
    weights = weights or {"a": 1, "b": 1, "c": 1}
    spec = PoolSettings.model_validate({
        "members": [{"url": f"http://{name}", "weight": w} for name, w in weights.items()],
        "algorithm": algorithm, "health": {"enabled": False, **settings.pop("health", {})}, **settings})
    return OriginPool(spec, clock=clock or FakeClock(), rng=random.Random(7))


def member(pool: OriginPool, name: str) -> Member:
    return next(m for m in pool.members if m.url == f"http://{name}")


def name_of(m: Member | None) -> str | None:
    return None if m is None else m.url.removeprefix("http://")


def shares(pool: OriginPool, picks: int, key: bool = False) -> dict[str, float]:
    counts = Counter(name_of(pool.pick(key=f"/k/{i}" if key else None)) for i in range(picks))
    return {name: n / picks for name, n in counts.items()}


def hold(pool: OriginPool, name: str, requests: int) -> None:
    """Leave `requests` attempts to member `name` in flight."""
    for _ in range(requests):
        pool.attempt(member(pool, name))


def fail(pool: OriginPool, name: str, times: int, kind: Failure = Failure.CONNECT) -> None:
    for _ in range(times):
        with pool.attempt(member(pool, name)) as attempt:
            attempt.failed(kind)


def succeed(pool: OriginPool, name: str, seconds: float = 0.0) -> None:
    clock = pool.clock
    assert isinstance(clock, FakeClock)
    with pool.attempt(member(pool, name)) as attempt:
        clock.advance(seconds)
        attempt.responded(200)


# -- settings ----------------------------------------------------------------------


@pytest.mark.parametrize("members, problem", [
    ([], "at least 1"),
    ([{"url": "http://a", "weight": 0}], "greater than 0"),
    ([{"url": "ftp://a"}], "http:// or https://"),
    ([{"url": "http://"}], "http:// or https://"),
    (["http://a", "http://a/"], "unique"),
])
def test_settings_refuse_bad_members(members: list[Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        PoolSettings(members=members)


def test_settings_refuse_unknown_algorithm_and_backoff_below_its_start() -> None:
    with pytest.raises(ValueError, match="algorithm"):
        PoolSettings.model_validate({"members": ["http://a"], "algorithm": "random"})
    with pytest.raises(ValueError, match="max_backoff"):
        PoolSettings.model_validate({"members": ["http://a"], "passive": {"backoff": 5, "max_backoff": 1}})


def test_settings_accept_bare_urls_and_drop_trailing_slash() -> None:
    settings = PoolSettings.model_validate({"members": ["http://a:9000/", {"url": "https://b", "weight": 3}]})
    assert [(m.url, m.weight) for m in settings.members] == [("http://a:9000", 1), ("https://b", 3)]
    assert settings.health.path == "/healthz" and settings.health.rise == 2 and settings.health.fall == 3
    assert settings.passive.failures == 3 and settings.passive.backoff == 1.0 and settings.passive.max_backoff == 30.0


def test_settings_embed_in_a_service_from_toml_and_environment(tmp_path: Any) -> None:
    class Service(ServiceSettings):
        section = "svc"
        pool: PoolSettings

    config = tmp_path / "cdn.toml"
    config.write_text('[svc.pool]\nalgorithm = "consistent_hash"\nmembers = [{url = "http://a", weight = 2}]\n'
                      '[svc.pool.health]\ninterval = 0.5\n')
    from_file = load_settings(Service, config, environ={})
    assert from_file.pool.algorithm == "consistent_hash" and from_file.pool.health.interval == 0.5
    from_env = load_settings(Service, environ={"CDN_SVC_POOL": json.dumps({"members": ["http://b"]})})
    assert from_env.pool.members[0].url == "http://b"
    with pytest.raises(SettingsError, match="svc.pool.members.0.weight"):
        load_settings(Service, environ={"CDN_SVC_POOL": '{"members": [{"url": "http://b", "weight": -1}]}'})


# -- distributions -----------------------------------------------------------------


def test_round_robin_takes_members_in_turn_ignoring_weight() -> None:
    pool = make_pool("round_robin", {"a": 3, "b": 1, "c": 1})
    assert [name_of(pool.pick()) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


@pytest.mark.parametrize("algorithm", ["weighted_round_robin", "least_connections", "least_response_time",
                                       "resource_based", "consistent_hash"])
def test_idle_pool_shares_follow_weights_3_to_1(algorithm: AlgorithmName) -> None:
    pool = make_pool(algorithm, {"a": 3, "b": 1})
    got = shares(pool, 10_000, key=True)
    assert got["a"] == pytest.approx(0.75, abs=0.02)
    assert got["b"] == pytest.approx(0.25, abs=0.02)


def test_smooth_weighted_round_robin_interleaves_like_nginx() -> None:
    pool = make_pool("weighted_round_robin", {"a": 5, "b": 1, "c": 1})
    cycle = "".join(str(name_of(pool.pick())) for _ in range(7))
    assert cycle == "aabacaa"  # nginx's documented sequence; a plain expansion gives "aaaaabc"


def test_smooth_weighted_round_robin_never_strays_a_pick_from_the_exact_share() -> None:
    weights = {"a": 5, "b": 1, "c": 1}
    pool = make_pool("weighted_round_robin", weights)
    counts: Counter[str] = Counter()
    for n in range(1, 71):
        counts[str(name_of(pool.pick()))] += 1
        for name, weight in weights.items():
            assert abs(counts[name] - n * weight / 7) < 1, (n, counts)


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6))
def test_each_cycle_of_total_weight_picks_gives_every_member_its_weight(weights: list[int]) -> None:
    pool = make_pool("weighted_round_robin", {f"m{i}": w for i, w in enumerate(weights)})
    for _ in range(2):
        cycle = Counter(name_of(pool.pick()) for _ in range(sum(weights)))
        assert cycle == {f"m{i}": w for i, w in enumerate(weights)}


def test_least_connections_picks_the_member_with_fewest_in_flight() -> None:
    pool = make_pool("least_connections")
    hold(pool, "a", 3)
    hold(pool, "b", 1)
    hold(pool, "c", 2)
    assert {name_of(pool.pick()) for _ in range(20)} == {"b"}


def test_least_connections_counts_in_flight_per_unit_of_weight() -> None:
    pool = make_pool("least_connections", {"a": 4, "b": 1})
    hold(pool, "a", 3)  # 0.75 per unit of weight
    hold(pool, "b", 1)  # 1.0
    assert name_of(pool.pick()) == "a"


def test_least_response_time_takes_a_member_without_samples_as_average() -> None:
    pool = make_pool("least_response_time", {"a": 1, "b": 1, "c": 1})
    succeed(pool, "a", 0.010)
    succeed(pool, "b", 0.030)
    picked = Counter()
    for _ in range(12):  # all left in flight: c is tried, but not flooded before it has answered once
        chosen = pool.pick()
        assert chosen is not None
        pool.attempt(chosen)
        picked[name_of(chosen)] += 1
    assert 0 < picked["c"] < picked["a"]


def test_least_response_time_prefers_the_faster_member_after_samples() -> None:
    pool = make_pool("least_response_time", {"a": 1, "b": 1})
    for _ in range(5):
        succeed(pool, "a", 0.100)
        succeed(pool, "b", 0.010)
    assert member(pool, "b").response_time == pytest.approx(0.010)
    assert shares(pool, 200) == {"b": 1.0}


def test_least_response_time_sends_to_the_slower_member_once_the_fast_one_queues() -> None:
    pool = make_pool("least_response_time", {"a": 1, "b": 1})
    succeed(pool, "a", 0.100)
    succeed(pool, "b", 0.010)
    picked = Counter()
    for _ in range(30):  # all left in flight, as under concurrency
        chosen = pool.pick()
        assert chosen is not None
        pool.attempt(chosen)
        picked[name_of(chosen)] += 1
    assert picked["b"] > picked["a"] > 0


def test_response_time_is_a_moving_average_that_follows_change() -> None:
    pool = make_pool("least_response_time", {"a": 1})
    succeed(pool, "a", 1.0)
    assert member(pool, "a").response_time == pytest.approx(1.0)
    succeed(pool, "a", 0.0)
    assert member(pool, "a").response_time == pytest.approx(0.7)
    for _ in range(20):
        succeed(pool, "a", 0.0)
    assert member(pool, "a").response_time < 0.001


def test_resource_based_steers_away_from_a_member_reporting_high_load() -> None:
    pool = make_pool("resource_based", {"a": 1, "b": 1})
    pool.record_check(member(pool, "a"), True, LoadReport(load=0.9))
    pool.record_check(member(pool, "b"), True, LoadReport(load=0.1))
    picked = Counter()
    for _ in range(20):  # all left in flight
        chosen = pool.pick()
        assert chosen is not None
        pool.attempt(chosen)
        picked[name_of(chosen)] += 1
    assert picked["b"] >= 14 and picked["a"] >= 1  # loaded, not dead: it still gets a little


def test_resource_based_counts_requests_other_clients_have_in_flight() -> None:
    pool = make_pool("resource_based", {"a": 1, "b": 1})
    hold(pool, "a", 2)
    pool.record_check(member(pool, "a"), True, LoadReport(in_flight=3))  # 2 of them ours: 1 from others
    pool.record_check(member(pool, "b"), True, LoadReport(in_flight=8))  # busy with other clients' requests
    assert member(pool, "a").others_in_flight == 1
    assert name_of(pool.pick()) == "a"


def test_consistent_hash_sends_a_key_to_the_same_member_every_time() -> None:
    pool = make_pool("consistent_hash", {name: 1 for name in "abcdef"})
    first = {key: name_of(pool.pick(key)) for key in (f"/assets/{i}.js" for i in range(200))}
    again = {key: name_of(pool.pick(key)) for key in first}
    assert first == again and len(set(first.values())) == 6


def test_consistent_hash_walks_past_an_unavailable_member_to_the_next_on_the_ring() -> None:
    names = {name: 1 for name in "abcdef"}
    pool = make_pool("consistent_hash", names)
    without_c = make_pool("consistent_hash", {name: 1 for name in "abdef"})
    member(pool, "c").health.healthy = False
    for i in range(500):
        assert name_of(pool.pick(f"/k/{i}")) == name_of(without_c.pick(f"/k/{i}"))


# -- picking ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_exclude_makes_pick_return_another_member(algorithm: AlgorithmName) -> None:
    pool = make_pool(algorithm)
    for i in range(50):
        first = pool.pick(f"/k/{i}")
        assert first is not None
        second = pool.pick(f"/k/{i}", exclude=frozenset({first.url}))
        assert second is not None and second is not first
        third = pool.pick(f"/k/{i}", exclude=frozenset({first.url, second.url}))
        assert third is not None and third not in (first, second)
        assert pool.pick(f"/k/{i}", exclude=frozenset(m.url for m in pool.members)) is None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_pick_never_returns_an_unhealthy_member_and_none_when_all_are(algorithm: AlgorithmName) -> None:
    pool = make_pool(algorithm)
    member(pool, "b").health.healthy = False
    assert {name_of(pool.pick(f"/k/{i}")) for i in range(100)} == {"a", "c"}
    member(pool, "a").health.healthy = member(pool, "c").health.healthy = False
    assert pool.pick("/k/1") is None


def test_picks_are_counted_per_member() -> None:
    pool = make_pool("round_robin")
    for _ in range(7):
        pool.pick()
    assert [m.picks for m in pool.members] == [3, 2, 2]


# -- request tracking -----------------------------------------------------------------


def test_attempt_is_in_flight_until_closed() -> None:
    pool = make_pool()
    a = member(pool, "a")
    attempt = pool.attempt(a)
    assert a.in_flight == 1
    attempt.responded(200)  # headers in, body still streaming
    assert a.in_flight == 1
    attempt.close()
    attempt.close()
    assert a.in_flight == 0


@pytest.mark.parametrize("exc, kind", [
    (httpx.ConnectError("refused"), Failure.CONNECT),
    (httpx.ConnectTimeout("slow connect"), Failure.CONNECT),
    (ConnectionRefusedError(), Failure.CONNECT),
    (httpx.ReadTimeout("slow"), Failure.TIMEOUT),
    (asyncio.TimeoutError(), Failure.TIMEOUT),
    (httpx.RemoteProtocolError("closed early"), Failure.PROTOCOL),
    (httpx.ReadError("reset"), Failure.PROTOCOL),
    (ConnectionResetError(), Failure.PROTOCOL),
    (asyncio.CancelledError(), None),
    (ValueError("our own bug"), None),
])
def test_exceptions_are_classified_into_failure_kinds(exc: BaseException, kind: Failure | None) -> None:
    assert failure_of(exc) is kind


def test_a_with_block_that_raises_counts_a_failure_of_that_kind_and_ends_the_attempt() -> None:
    pool = make_pool()
    a = member(pool, "a")
    with pytest.raises(httpx.ConnectError), pool.attempt(a):
        raise httpx.ConnectError("refused")
    assert a.in_flight == 0 and a.ejection.failures == 1 and a.last_failure == "connect"


def test_a_cancelled_request_is_not_held_against_the_member() -> None:
    pool = make_pool()
    a = member(pool, "a")
    with pytest.raises(asyncio.CancelledError), pool.attempt(a):
        raise asyncio.CancelledError
    assert a.in_flight == 0 and a.ejection.failures == 0 and a.response_time is None


def test_refused_connections_do_not_make_a_member_look_fast() -> None:
    pool = make_pool("least_response_time", {"a": 1, "b": 1})
    succeed(pool, "a", 0.050)
    succeed(pool, "b", 0.100)
    fail(pool, "a", 2, Failure.CONNECT)
    assert member(pool, "a").response_time == pytest.approx(0.050)


def test_a_timeout_counts_its_wait_as_response_time() -> None:
    clock = FakeClock()
    pool = make_pool("least_response_time", {"a": 1}, clock=clock)
    with pool.attempt(member(pool, "a")) as attempt:
        clock.advance(5.0)
        attempt.failed(Failure.TIMEOUT)
    assert member(pool, "a").response_time == pytest.approx(5.0)


# -- passive checks ------------------------------------------------------------------


def test_consecutive_failures_eject_a_member_until_the_backoff_expires() -> None:
    clock = FakeClock()
    pool = make_pool(clock=clock, passive={"failures": 3, "backoff": 1.0})
    a = member(pool, "a")
    fail(pool, "a", 2)
    assert a.available(clock())
    fail(pool, "a", 1)
    assert not a.available(clock())
    assert "a" not in {name_of(pool.pick()) for _ in range(10)}
    clock.advance(0.99)
    assert not a.available(clock())
    clock.advance(0.02)
    assert a.available(clock())


def test_a_success_between_failures_starts_the_count_again() -> None:
    pool = make_pool(passive={"failures": 3})
    fail(pool, "a", 2)
    succeed(pool, "a")
    fail(pool, "a", 2)
    assert member(pool, "a").available(pool.clock())


def test_backoff_doubles_on_each_ejection_up_to_the_max_and_resets_on_success() -> None:
    clock = FakeClock()
    pool = make_pool(clock=clock, passive={"failures": 3, "backoff": 1.0, "max_backoff": 5.0})
    a = member(pool, "a")
    fail(pool, "a", 3)
    lengths = [a.ejection.backoff]
    for _ in range(4):
        clock.advance(a.ejection.backoff)
        assert a.available(clock())
        fail(pool, "a", 1)  # back on probation: one more failure ejects it again
        assert not a.available(clock())
        lengths.append(a.ejection.backoff)
    assert lengths == [1.0, 2.0, 4.0, 5.0, 5.0]
    clock.advance(5.0)
    succeed(pool, "a")
    fail(pool, "a", 2)
    assert a.available(clock())
    fail(pool, "a", 1)
    assert a.ejection.backoff == 1.0


def test_failures_of_requests_already_in_flight_do_not_lengthen_an_ejection() -> None:
    clock = FakeClock()
    pool = make_pool(clock=clock, passive={"failures": 3, "backoff": 1.0})
    a = member(pool, "a")
    stragglers = [pool.attempt(a) for _ in range(10)]
    for attempt in stragglers:
        attempt.failed(Failure.TIMEOUT)
    assert a.ejection.backoff == 1.0 and a.ejection.until == clock() + 1.0


def test_5xx_ejects_only_when_the_pool_counts_it() -> None:
    lenient = make_pool()
    fail(lenient, "a", 5, Failure.STATUS_5XX)
    for _ in range(5):
        with lenient.attempt(member(lenient, "b")) as attempt:
            attempt.responded(503)
    assert member(lenient, "a").available(lenient.clock()) and member(lenient, "b").available(lenient.clock())
    strict = make_pool(passive={"eject_on_5xx": True})
    for _ in range(3):
        with strict.attempt(member(strict, "b")) as attempt:
            attempt.responded(503)
    assert not member(strict, "b").available(strict.clock())
    assert member(strict, "b").last_failure == "status5xx"


def test_disabled_passive_checks_never_eject() -> None:
    pool = make_pool(passive={"enabled": False})
    fail(pool, "a", 20)
    assert member(pool, "a").available(pool.clock())


def test_a_passing_active_check_ends_an_ejection_early() -> None:
    pool = make_pool(passive={"failures": 1, "backoff": 30.0, "max_backoff": 30.0})
    a = member(pool, "a")
    fail(pool, "a", 1)
    assert not a.available(pool.clock())
    pool.record_check(a, True)
    assert a.available(pool.clock())


# -- active check hysteresis ------------------------------------------------------------


def test_member_goes_down_after_fall_failures_and_up_after_rise_passes() -> None:
    pool = make_pool(health={"rise": 2, "fall": 3})
    a = member(pool, "a")
    for passed, healthy in [(False, True), (False, True), (False, False), (True, False), (True, True)]:
        pool.record_check(a, passed, error=None if passed else "status 503")
        assert a.health.healthy is healthy
    assert a.health.last_error is None


def test_a_lone_result_amid_the_other_kind_does_not_flip_the_verdict() -> None:
    pool = make_pool(health={"rise": 2, "fall": 3})
    a = member(pool, "a")
    for passed in [False, False, True, False, False, True, False, False]:
        pool.record_check(a, passed, error="timeout")
        assert a.health.healthy
    pool.record_check(a, False, error="timeout")
    assert not a.health.healthy
    for passed in [True, False, True, False, True, False]:
        pool.record_check(a, passed, error="timeout")
        assert not a.health.healthy
    pool.record_check(a, True)
    pool.record_check(a, True)
    assert a.health.healthy


def test_members_can_start_unhealthy_until_rise_checks_pass() -> None:
    spec = PoolSettings.model_validate({"members": ["http://a"], "health": {"initially_healthy": False, "rise": 2}})
    pool = OriginPool(spec, clock=FakeClock())
    a = pool.members[0]
    assert pool.pick() is None
    pool.record_check(a, True)
    assert pool.pick() is None
    pool.record_check(a, True)
    assert pool.pick() is a


def test_without_active_checks_members_are_always_healthy() -> None:
    spec = PoolSettings.model_validate({"members": ["http://a"], "health": {"enabled": False, "initially_healthy": False}})
    assert OriginPool(spec).pick() is not None


# -- reported load ------------------------------------------------------------------------


@pytest.mark.parametrize("body, report", [
    (b'{"status": "ok", "in_flight": 4}', LoadReport(in_flight=4)),
    (b'{"in_flight": 1, "load": 0.5, "cpu": 0.25}', LoadReport(in_flight=1, load=0.5, cpu=0.25)),
    (b'{"cpu": 87}', LoadReport(cpu=0.87)),  # percent
    (b'{"load": 7, "in_flight": -2}', LoadReport(load=1.0)),  # clamped
    (b'{"load": "high", "in_flight": true}', LoadReport()),
    (b'{"status": "ok"}', None),
    (b"ok", None),
    (b"[1, 2]", None),
    (b"\xff\xfe", None),
])
def test_load_reports_are_read_leniently(body: bytes, report: LoadReport | None) -> None:
    assert LoadReport.parse(body) == report


def test_utilisation_is_the_busier_of_load_and_cpu() -> None:
    assert LoadReport(load=0.2, cpu=0.6).utilisation == 0.6
    assert LoadReport(in_flight=9).utilisation == 0.0


# -- membership and snapshot -----------------------------------------------------------------


def test_set_members_keeps_what_is_known_of_members_that_stay() -> None:
    pool = make_pool("consistent_hash", {"a": 1, "b": 1})
    hold(pool, "a", 2)
    a = member(pool, "a")
    pool.set_members([PoolSettings.model_validate({"members": ["http://a", "http://c"]}).members[i] for i in (0, 1)])
    assert [name_of(m) for m in pool.members] == ["a", "c"]
    assert member(pool, "a") is a and a.in_flight == 2
    assert {name_of(pool.pick(f"/k/{i}")) for i in range(100)} == {"a", "c"}


def test_snapshot_is_json_and_shows_each_members_state() -> None:
    clock = FakeClock()
    pool = make_pool("least_response_time", clock=clock, passive={"failures": 1, "backoff": 2.0})
    succeed(pool, "a", 0.25)
    fail(pool, "b", 1, Failure.TIMEOUT)
    pool.record_check(member(pool, "c"), False, LoadReport(in_flight=3, load=0.5), "status 503")
    hold(pool, "a", 1)
    pool.pick()
    snapshot = json.loads(json.dumps(pool.snapshot()))
    assert snapshot["algorithm"] == "least_response_time" and snapshot["available"] == 2
    a, b, c = snapshot["members"]
    assert a["url"] == "http://a" and a["weight"] == 1 and a["in_flight"] == 1
    assert a["response_time"] == 0.25 and a["healthy"] and a["available"]
    assert b["ejected_for"] == 2.0 and b["last_failure"] == "timeout" and not b["available"]
    assert c["check_failures"] == 1 and c["last_check_error"] == "status 503"
    assert c["reported"] == {"in_flight": 3, "load": 0.5, "cpu": None}
    assert sum(m["picks"] for m in snapshot["members"]) == 1
