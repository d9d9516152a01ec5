"""The shield: GCRA, rules and keys, client addresses, bans, size limits, RateLimit fields, and fleet-wide limits
with real redis-servers (shared by several edge-side shields, stopped mid-flood, or not answering at all)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import Field, ValidationError

from cdn.config import ServiceSettings, SettingsError, load_settings
from edge.headers import Headers
from edge.shield import ADMITTED, Decision, RuleSettings, Shield, ShieldSettings, SizeLimits, check_size
from edge.shield.address import ClientAddress, parse_address
from edge.shield.decision import limit_item
from edge.shield.gcra import Gcra, LocalLimiter
from edge.shield.rules import RequestView, compile_rules, normalise_path, policy_item
from tests.redis_server import RedisServer
from tests.servers import free_port


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rule(**fields: Any) -> RuleSettings:
    return RuleSettings(**{"name": "r", "rate": 10, "burst": 5, **fields})


def shield_with(*rules: RuleSettings, clock: FakeClock | None = None, redis: str | None = None,
                **settings: Any) -> Shield:
    clock = clock or FakeClock()
    return Shield(ShieldSettings(rules=list(rules), **settings), redis=redis, clock=clock,
                  redis_clock=clock if redis else None)


def completes_without_suspending(coro: Any) -> Any:
    """Run a coroutine one step: it must finish at once (no await reached a pending future)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the coroutine suspended")


async def flood(shield: Shield, n: int, client: str = "198.51.100.7", path: str = "/api/x",
                origin_bound: bool = True) -> list[Decision]:
    return [await shield.admit(client, "GET", path, (), origin_bound=origin_bound) for _ in range(n)]


def statuses(decisions: list[Decision]) -> list[int]:
    return [d.status for d in decisions]


# -- GCRA ---------------------------------------------------------------------------------

def test_gcra_allows_the_burst_at_once_then_one_request_per_interval() -> None:
    gcra, limiter, now = Gcra(rate=10, burst=5), LocalLimiter(), 50.0
    assert [limiter.check("k", gcra, now).allowed for _ in range(6)] == [True] * 5 + [False]
    assert not limiter.check("k", gcra, now + 0.099).allowed
    assert limiter.check("k", gcra, now + 0.1).allowed
    assert not limiter.check("k", gcra, now + 0.1).allowed
    assert limiter.check("k", gcra, now + 0.2).allowed


def test_gcra_counts_remaining_down_and_says_when_to_retry_and_when_it_resets() -> None:
    gcra, limiter, now = Gcra(rate=2, burst=3), LocalLimiter(), 0.0
    first = limiter.check("k", gcra, now)
    assert (first.remaining, first.retry_after, first.reset) == (2, 0.0, pytest.approx(0.5))
    assert [limiter.check("k", gcra, now).remaining for _ in range(2)] == [1, 0]
    refused = limiter.check("k", gcra, now)
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after == pytest.approx(0.5)  # one interval until one more fits
    assert refused.reset == pytest.approx(1.5)  # three intervals until the bucket is full
    later = limiter.check("k", gcra, now + 1.5)  # full again: the whole burst is back
    assert later.allowed and later.remaining == 2


def test_gcra_with_a_fractional_rate() -> None:
    gcra, limiter = Gcra(rate=0.5, burst=1), LocalLimiter()
    assert limiter.check("k", gcra, 0.0).allowed
    refused = limiter.check("k", gcra, 1.0)
    assert not refused.allowed and refused.retry_after == pytest.approx(1.0)
    assert limiter.check("k", gcra, 2.0).allowed


@given(rate=st.floats(0.5, 50), burst=st.integers(1, 20),
       arrivals=st.lists(st.floats(0, 10, allow_nan=False), max_size=300))
def test_gcra_never_admits_more_than_burst_plus_rate_times_any_window(rate: float, burst: int,
                                                                      arrivals: list[float]) -> None:
    gcra, limiter = Gcra(rate, burst), LocalLimiter()
    admitted = [t for t in sorted(arrivals) if limiter.check("k", gcra, t).allowed]
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + rate * (admitted[j] - admitted[i]) + 1e-6


def test_local_limiter_refund_gives_one_request_back() -> None:
    gcra, limiter = Gcra(rate=1, burst=1), LocalLimiter()
    assert limiter.check("k", gcra, 0.0).allowed
    assert not limiter.peek("k", gcra, 0.0).allowed
    limiter.refund("k", gcra)
    assert limiter.check("k", gcra, 0.0).allowed


def test_local_limiter_forgets_idle_keys_first_when_full() -> None:
    gcra, limiter = Gcra(rate=1, burst=2), LocalLimiter(max_keys=100)
    for i in range(100):
        limiter.check(f"idle-{i}", gcra, 0.0)
    limiter.check("busy", gcra, 10.0)
    assert limiter.check("busy-2", gcra, 10.0).allowed
    assert set(limiter.tats) == {"busy", "busy-2"} and limiter.evictions == 0


# -- rules and keys -----------------------------------------------------------------------

def view(client: str | None = "203.0.113.9", method: str = "GET", path: str = "/", **headers: str) -> RequestView:
    return RequestView(client, method, path, Headers(headers.items()))


def test_rule_applies_to_its_path_prefixes_and_methods_only() -> None:
    (r,) = compile_rules([rule(paths=["/api/", "/search"], methods=["post", "PUT"])])
    assert r.key_for(view(method="POST", path="/api/products")) == ("203.0.113.9",)
    assert r.key_for(view(method="PUT", path="/search?q=1")) is not None
    assert r.key_for(view(method="GET", path="/api/products")) is None
    assert r.key_for(view(method="POST", path="/static/app.js")) is None


@pytest.mark.parametrize("path", ["/x/../api/p", "//api/p", "/./api/p", "/api/./p"])
def test_path_prefixes_match_the_normalised_path(path: str) -> None:
    (r,) = compile_rules([rule(paths=["/api/"])])
    assert r.key_for(view(path=path)) is not None


def test_a_query_is_not_part_of_the_path() -> None:
    (r,) = compile_rules([rule(key=["path"], paths=["/search"])])
    assert r.key_for(view(path="/search?q=1")) == ("/search",)


def test_normalise_path() -> None:
    assert normalise_path("/a/b/../c//d/./") == "/a/c/d/"
    assert normalise_path("/../..") == "/"
    assert normalise_path("/plain/path") == "/plain/path"


def test_key_combines_its_parts_in_order() -> None:
    (r,) = compile_rules([rule(key=["ip", "header:X-API-Key", "method", "path"])])
    assert r.key_for(view(method="POST", path="/a//b", **{"x-api-key": "k1"})) == ("203.0.113.9", "k1", "POST", "/a/b")


def test_header_keys_read_raw_asgi_headers_too() -> None:
    (r,) = compile_rules([rule(key=["header:x-api-key"])])
    request = RequestView("203.0.113.9", "GET", "/", [(b"X-Api-Key", b" k2 "), (b"x-api-key", b"k3")])
    assert r.key_for(request) == ("k2",)


def test_a_rule_does_not_apply_without_the_header_or_address_it_counts_by() -> None:
    by_key, by_ip = compile_rules([rule(name="a", key=["header:x-api-key"]), rule(name="b", key=["ip"])])
    assert by_key.key_for(view()) is None
    assert by_ip.key_for(view(client=None)) is None


def test_an_empty_key_is_one_counter_for_everyone() -> None:
    (r,) = compile_rules([rule(name="budget", key=[])])
    assert r.key_for(view(client="192.0.2.1")) == r.key_for(view(client="192.0.2.2")) == ()
    assert r.redis_key("cdn:", ()) == "cdn:shield:budget"


def test_redis_keys_hash_the_values_they_count_by() -> None:
    (r,) = compile_rules([rule(name="api", key=["header:x-api-key"])])
    key = r.redis_key("cdn:", ("secret-api-key",))
    assert key.startswith("cdn:shield:api:") and "secret" not in key
    assert key != r.redis_key("cdn:", ("other",))


def test_settings_refuse_unknown_key_parts_duplicate_names_and_bad_ranges() -> None:
    with pytest.raises(ValidationError, match="key part"):
        rule(key=["cookie"])
    with pytest.raises(ValidationError, match="not a valid field name"):
        rule(key=["header:bad name"])
    with pytest.raises(ValidationError, match="unique"):
        ShieldSettings(rules=[rule(name="a"), rule(name="a")])
    with pytest.raises(ValidationError, match="CIDR"):
        ShieldSettings(trusted_proxies=["10.0.0.0/33"])
    with pytest.raises(ValidationError):
        rule(rate=0)


def test_default_rules_limit_origin_bound_requests_per_client_and_can_be_removed() -> None:
    (default,) = ShieldSettings().rules
    assert (default.key, default.scope, default.rate, default.burst, default.action) == (["ip"], "origin", 20, 40, "reject")
    assert ShieldSettings(rules=[]).rules == []


def test_shield_settings_load_from_toml_and_environment(tmp_path: Path) -> None:
    class Edge(ServiceSettings):
        section = "edge"
        shield: ShieldSettings = Field(default_factory=ShieldSettings, description="the shield")

    config = tmp_path / "cdn.toml"
    config.write_text('[edge.shield]\ntrusted_proxies = ["10.0.0.0/8"]\n'
                      '[[edge.shield.rules]]\nname = "api"\nkey = ["ip", "header:x-api-key"]\n'
                      'paths = ["/api/"]\nrate = 5\nburst = 10\n')
    loaded = load_settings(Edge, config, environ={})
    assert loaded.shield.rules[0].key == ["ip", "header:x-api-key"]
    from_env = load_settings(Edge, environ={"CDN_EDGE_SHIELD": json.dumps({"rules": []})})
    assert from_env.shield.rules == []
    with pytest.raises(SettingsError, match="shield"):
        load_settings(Edge, environ={"CDN_EDGE_SHIELD": json.dumps({"ipv6_prefix": 12})})


# -- client addresses ---------------------------------------------------------------------

def scope(peer: str | None, *forwarded_for: str) -> dict[str, Any]:
    return {"type": "http", "client": (peer, 4711) if peer else None,
            "headers": [(b"x-forwarded-for", v.encode("latin-1")) for v in forwarded_for]}


def test_without_trusted_proxies_the_socket_address_is_the_client() -> None:
    client = ClientAddress()
    assert client(scope("192.0.2.10", "203.0.113.5")) == "192.0.2.10"


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    client = ClientAddress(["10.0.0.0/8"])
    assert client(scope("192.0.2.10", "203.0.113.5, 10.0.0.1")) == "192.0.2.10"


def test_behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() -> None:
    client = ClientAddress(["10.0.0.0/8", "fd00::/8"])
    # The client wrote "1.1.1.1" itself; 203.0.113.5 is what our first proxy saw; then two of our hops.
    assert client(scope("10.0.0.2", "1.1.1.1, 203.0.113.5, 10.0.0.7", "fd00::3")) == "203.0.113.5"


def test_when_every_hop_is_trusted_the_left_most_is_the_client() -> None:
    client = ClientAddress(["10.0.0.0/8"])
    assert client(scope("10.0.0.2", "10.1.1.1, 10.2.2.2")) == "10.1.1.1"
    assert client(scope("10.0.0.2")) == "10.0.0.2"


def test_a_garbage_entry_stops_the_walk_at_the_last_trusted_hop() -> None:
    client = ClientAddress(["10.0.0.0/8"])
    assert client(scope("10.0.0.2", "203.0.113.5, unknown, 10.0.0.9")) == "10.0.0.9"


def test_ipv6_clients_are_normalised_and_counted_per_prefix() -> None:
    per_64, per_address = ClientAddress(ipv6_prefix=64), ClientAddress(ipv6_prefix=128)
    assert per_64(scope("2001:DB8:0:0:1::7")) == "2001:db8::/64"
    assert per_64(scope("2001:db8::1")) == per_64(scope("2001:db8::ffff:2"))
    assert per_address(scope("2001:0db8:0000::0001")) == "2001:db8::1"
    assert per_64(scope("::ffff:192.0.2.1")) == "192.0.2.1"  # IPv4-mapped is the IPv4 client


def test_forwarded_for_entries_with_ports_brackets_and_zones() -> None:
    assert parse_address("[2001:db8::1]:8080") == ipaddress.ip_address("2001:db8::1")
    assert parse_address("192.0.2.1:80") == ipaddress.ip_address("192.0.2.1")
    assert parse_address(' "192.0.2.1" ') == ipaddress.ip_address("192.0.2.1")
    assert parse_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_address("unknown") is None and parse_address("") is None and parse_address("[::1") is None


def test_non_ip_peers_are_their_own_name() -> None:
    assert ClientAddress()(scope("testclient")) == "testclient"
    assert ClientAddress()({"type": "http", "headers": []}) is None


@hypothesis_settings(max_examples=300)
@given(st.lists(st.one_of(st.binary(max_size=80), st.ip_addresses().map(lambda a: str(a).encode()),
                          st.text(max_size=40).map(lambda t: t.encode("latin-1", "replace"))), max_size=6),
       st.sampled_from([64, 128]))
def test_arbitrary_forwarded_for_never_raises(lines: list[bytes], prefix: int) -> None:
    client = ClientAddress(["10.0.0.0/8", "::1/128"], ipv6_prefix=prefix)
    raw = {"type": "http", "client": ("10.0.0.2", 1), "headers": [(b"x-forwarded-for", v) for v in lines]}
    name = client(raw)
    assert isinstance(name, str)
    ipaddress.ip_network(name, strict=False)  # always an address or a prefix
    raw["client"] = ("192.0.2.77", 1)  # not a trusted proxy: whatever it wrote is ignored
    assert client(raw) == "192.0.2.77"


# -- decisions on one edge ----------------------------------------------------------------

def test_hits_are_not_limited_by_default_and_admit_does_not_suspend() -> None:
    shield = Shield(clock=FakeClock())
    for _ in range(1000):
        assert completes_without_suspending(shield.admit("192.0.2.1", "GET", "/a", ())) is ADMITTED


async def test_default_rule_allows_each_client_a_burst_of_40_then_20_origin_requests_per_second() -> None:
    clock = FakeClock()
    shield = Shield(clock=clock)
    assert statuses(await flood(shield, 41)) == [200] * 40 + [429]
    assert statuses(await flood(shield, 1, client="192.0.2.99")) == [200]  # other clients are not affected
    clock.advance(1.0)
    assert statuses(await flood(shield, 21)) == [200] * 20 + [429]


async def test_a_refusal_carries_retry_after_and_ratelimit_fields() -> None:
    shield = shield_with(rule(name="origin", rate=20, burst=40))
    *_, refused = await flood(shield, 41)
    assert (refused.allowed, refused.status, refused.reason, refused.rule) == (False, 429, "rate-limited", "origin")
    fields = dict(refused.headers)
    assert fields[b"ratelimit-policy"] == b'"origin";q=40;w=2'
    assert fields[b"ratelimit"] == b'"origin";r=0;t=1'
    assert fields[b"retry-after"] == b"1"  # the same instant as t
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in refused.headers)


def test_ratelimit_fields_are_structured_field_lists() -> None:
    sf_item = re.compile(r'^"[A-Za-z0-9._-]+"(;[a-z]+=\d+)+$')
    for rate, burst, expected in [(20, 40, '"r";q=40;w=2'), (3, 1, '"r";q=3;w=1'), (0.5, 1, '"r";q=1;w=2'),
                                  (100, 10, '"r";q=100;w=1'), (0.1, 30, '"r";q=30;w=300')]:
        (r,) = compile_rules([rule(rate=rate, burst=burst)])
        assert policy_item(r.name, r.gcra) == expected == r.policy.decode() and sf_item.match(expected)
        refused = LocalLimiter()
        for _ in range(burst + 1):
            verdict = refused.check("k", r.gcra, 0.0)
        assert sf_item.match(limit_item(r, verdict))


async def test_retry_after_is_a_whole_number_of_seconds_rounded_up() -> None:
    shield = shield_with(rule(rate=0.4, burst=1))
    refused = (await flood(shield, 2))[1]
    assert dict(refused.headers)[b"retry-after"] == b"3"  # 2.5 s
    assert dict(refused.headers)[b"ratelimit"] == b'"r";r=0;t=3'


async def test_a_log_rule_counts_but_never_refuses() -> None:
    shield = shield_with(rule(name="watch", action="log", rate=1, burst=2))
    assert statuses(await flood(shield, 5)) == [200] * 5
    assert shield.snapshot()["decisions"]["watch"] == {"allowed": 2, "logged": 3}


async def test_a_spent_budget_sheds_and_a_client_limit_comes_first() -> None:
    clock = FakeClock()
    shield = shield_with(rule(name="client", rate=1, burst=2), rule(name="budget", key=[], rate=1, burst=3,
                                                                        action="shed"), clock=clock)
    first = await flood(shield, 3, client="192.0.2.1")
    assert statuses(first) == [200, 200, 429]  # its own limit, before the budget is spent
    second = await flood(shield, 2, client="192.0.2.2")
    assert statuses(second) == [200, 503]  # the budget had 3; the refused request above took none of it
    shed = second[1]
    assert shed.shed and shed.reason == "over-budget" and shed.rule == "budget"
    assert [k for k, _ in shed.headers] == [b"retry-after"]  # no RateLimit fields: they would reveal capacity


async def test_a_refused_request_charges_no_counter() -> None:
    shield = shield_with(rule(name="tight", rate=1, burst=1), rule(name="loose", rate=1, burst=2))
    assert statuses(await flood(shield, 3)) == [200, 429, 429]
    assert shield.local.peek((1, ("198.51.100.7",)), shield.rules[1].gcra, 1000.0).allowed  # loose: 1 of 2 used


async def test_rules_of_scope_all_apply_at_receive_and_origin_rules_only_before_fetching() -> None:
    shield = shield_with(rule(name="everything", scope="all", rate=1, burst=1),
                         rule(name="fetches", scope="origin", rate=1, burst=5))
    assert statuses(await flood(shield, 2, origin_bound=False)) == [200, 429]
    assert statuses(await flood(shield, 2, origin_bound=True)) == [200, 200]


async def test_advertise_adds_ratelimit_fields_to_admitted_requests() -> None:
    shield = shield_with(rule(name="origin", rate=20, burst=40), advertise=True)
    (admitted,) = await flood(shield, 1)
    assert admitted.allowed and dict(admitted.headers)[b"ratelimit"] == b'"origin";r=39;t=1'


async def test_a_disabled_shield_admits_everything() -> None:
    shield = shield_with(rule(rate=1, burst=1), enabled=False)
    assert statuses(await flood(shield, 10)) == [200] * 10


# -- the penalty box ----------------------------------------------------------------------

async def test_a_client_that_keeps_being_refused_is_banned_then_released() -> None:
    clock = FakeClock()
    shield = shield_with(rule(name="origin", rate=1, burst=1), clock=clock,
                         penalty={"violations": 5, "window": 10, "ban": 30})
    decisions = await flood(shield, 8)
    assert statuses(decisions) == [200] + [429] * 7
    assert [d.reason for d in decisions[1:]] == ["rate-limited"] * 6 + ["banned"]  # the 6th refusal bans
    banned = await shield.admit("198.51.100.7", "GET", "/static/app.js", (), origin_bound=False)
    assert (banned.status, banned.reason, dict(banned.headers)[b"retry-after"]) == (429, "banned", b"30")
    assert shield.snapshot()["bans"] == [{"client": "198.51.100.7", "expires_in": 30.0}]
    assert (await shield.admit("192.0.2.8", "GET", "/", ())).allowed  # others are not banned
    clock.advance(30)
    assert statuses(await flood(shield, 1)) == [200]
    assert shield.snapshot()["bans"] == []


async def test_a_ban_is_checked_before_anything_else_and_does_not_suspend() -> None:
    clock = FakeClock()
    shield = shield_with(rule(rate=1, burst=1), clock=clock, penalty={"violations": 1, "window": 60, "ban": 5})
    await flood(shield, 3)
    refused = completes_without_suspending(shield.admit("198.51.100.7", "GET", "/", (), origin_bound=False))
    assert refused.reason == "banned"


async def test_refusals_spread_out_in_time_do_not_ban() -> None:
    clock = FakeClock()
    shield = shield_with(rule(rate=1, burst=1), clock=clock, penalty={"violations": 2, "window": 10, "ban": 60})
    for _ in range(10):
        assert statuses(await flood(shield, 2)) == [200, 429]
        clock.advance(5.0)  # one refusal per 5 s is within 2 per 10 s
    assert shield.snapshot()["counters"]["bans"] == 0


# -- size limits --------------------------------------------------------------------------

def http_scope(path: str = "/", query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": query,
            "headers": headers if headers is not None else [(b"host", b"shop.example")]}


def test_size_limits_answer_414_431_and_413() -> None:
    limits = SizeLimits(max_url_length=100, max_header_count=5, max_header_bytes=300, max_body=1000)
    assert check_size(http_scope("/a", b"q=1"), limits) is None
    assert check_size(http_scope("/" + "a" * 99), limits) is None
    assert check_size(http_scope("/" + "a" * 100), limits)[0] == 414
    assert check_size(http_scope("/a", b"q=" + b"x" * 97), limits)[0] == 414
    assert check_size(http_scope(headers=[(b"x-h", b"v")] * 6), limits)[0] == 431
    status, message = check_size(http_scope(headers=[(b"cookie", b"c" * 300)]), limits)
    assert status == 431 and "300" in message
    assert check_size(http_scope(headers=[(b"content-length", b"1001")]), limits)[0] == 413
    assert check_size(http_scope(headers=[(b"content-length", b"1000")]), limits) is None
    assert check_size(http_scope(headers=[(b"content-length", b"12abc")]), limits) is None  # the server's 400


def test_shield_counts_size_refusals() -> None:
    shield = Shield(ShieldSettings(sizes={"max_url_length": 20}))
    assert shield.check_size(http_scope("/" + "a" * 30))[0] == 414
    assert shield.snapshot()["size_refusals"] == {"414": 1}


# -- fleet-wide limits in Redis -----------------------------------------------------------

@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def closing() -> AsyncIterator[list[Shield]]:
    shields: list[Shield] = []
    yield shields
    for shield in shields:
        await shield.close()


async def test_fleet_limit_holds_across_three_edges_sharing_redis(redis_server: RedisServer,
                                                                  closing: list[Shield]) -> None:
    clock = FakeClock()
    rate, burst, seconds = 10, 5, 3.0
    edges = [shield_with(rule(name="origin", rate=rate, burst=burst), clock=clock, redis=redis_server.url,
                         redis_timeout=2.0, penalty={"enabled": False}) for _ in range(3)]
    closing.extend(edges)
    start, admitted = clock.now, []
    while clock.now - start <= seconds:
        for edge in edges:
            if (await edge.admit("198.51.100.7", "GET", "/api", (), origin_bound=True)).allowed:
                admitted.append(clock.now - start)
        clock.advance(0.007)
    # Exactly the configured limit fleet-wide: the burst, then the rate, and no window ever holds more.
    assert burst + rate * seconds - 2 <= len(admitted) <= burst + rate * seconds
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + rate * (admitted[j] - admitted[i]) + 1e-6
    stats = [edge.snapshot()["redis"] for edge in edges]
    assert sum(s["errors"] + s["timeouts"] for s in stats) == 0
    assert sum(s["round_trips"] for s in stats) < 3 * seconds / 0.007 / 3  # most refusals were remembered


async def test_a_caller_s_clock_is_not_undone_by_redis_expiring_keys_by_its_own(redis_server: RedisServer,
                                                                                 closing: list[Shield]) -> None:
    # On a busy machine the fake clock of a test can fall behind real time, by which Redis expires keys.
    clock = FakeClock()
    edges = [shield_with(rule(name="origin", rate=10, burst=1), clock=clock, redis=redis_server.url,
                         redis_timeout=2.0, penalty={"enabled": False}) for _ in range(2)]
    closing.extend(edges)
    assert (await edges[0].admit("198.51.100.7", "GET", "/api", (), origin_bound=True)).allowed
    await asyncio.sleep(0.3)  # three intervals of real time; none on the edges' clock
    assert not (await edges[1].admit("198.51.100.7", "GET", "/api", (), origin_bound=True)).allowed


async def test_fleet_limit_holds_in_real_time_across_two_edges(redis_server: RedisServer,
                                                               closing: list[Shield]) -> None:
    rate, burst = 20, 10
    edges = [Shield(ShieldSettings(rules=[rule(name="origin", rate=rate, burst=burst)], redis_timeout=2.0,
                                   penalty={"enabled": False}), redis=redis_server.url) for _ in range(2)]
    closing.extend(edges)
    admitted = [0, 0]

    async def client(i: int, until: float) -> None:
        while time.monotonic() < until:
            if (await edges[i].admit("198.51.100.7", "GET", "/api", (), origin_bound=True)).allowed:
                admitted[i] += 1
            await asyncio.sleep(0.001)

    start = time.monotonic()
    await asyncio.gather(client(0, start + 1.5), client(1, start + 1.5))
    elapsed = time.monotonic() - start
    assert sum(admitted) <= burst + rate * elapsed + 1
    assert sum(admitted) >= burst + rate * 1.5 * 0.5  # generous: a noisy machine may slow the clients
    assert min(admitted) > 0
    assert all(e.snapshot()["redis"]["errors"] == 0 for e in edges)


async def test_a_burst_spread_over_edges_is_admitted_in_full_and_no_more(redis_server: RedisServer,
                                                                         closing: list[Shield]) -> None:
    clock = FakeClock()
    a, b = (shield_with(rule(name="origin", rate=20, burst=40), clock=clock, redis=redis_server.url,
                        redis_timeout=2.0) for _ in range(2))
    closing.extend([a, b])
    assert statuses(await flood(a, 30)) == [200] * 30
    assert statuses(await flood(b, 10)) == [200] * 10  # the local limits never refuse what the fleet admits
    assert statuses(await flood(a, 1)) == statuses(await flood(b, 1)) == [429]
    assert (await flood(b, 1))[0].reason == "rate-limited"


async def test_a_flood_costs_far_fewer_round_trips_than_requests(redis_server: RedisServer,
                                                                 closing: list[Shield]) -> None:
    clock = FakeClock()
    a, b = (shield_with(rule(name="origin", rate=20, burst=40), clock=clock, redis=redis_server.url,
                        redis_timeout=2.0, penalty={"enabled": False}) for _ in range(2))
    closing.extend([a, b])
    await flood(a, 20)
    await flood(b, 20)  # the fleet's burst is spent, half through each edge
    requests = 0
    for _ in range(200):  # 2 s of a 1000 request/s flood through edge b
        await flood(b, 10)
        requests += 10
        clock.advance(0.01)
    trips = b.snapshot()["redis"]["round_trips"]
    assert trips / requests < 0.1
    assert b.snapshot()["counters"]["remembered_rejections"] > requests / 2


async def test_concurrent_decisions_share_round_trips(redis_server: RedisServer, closing: list[Shield]) -> None:
    shield = Shield(ShieldSettings(redis_timeout=2.0), redis=redis_server.url)
    closing.append(shield)
    decisions = await asyncio.gather(*(shield.admit(f"192.0.2.{i}", "GET", "/", (), origin_bound=True)
                                       for i in range(100)))
    assert all(d.allowed for d in decisions)
    stats = shield.snapshot()["redis"]
    assert stats["decisions"] == 100 and stats["round_trips"] <= 10


async def test_redis_stopped_mid_flood_local_limits_apply_and_nothing_waits(redis_server: RedisServer,
                                                                           closing: list[Shield]) -> None:
    clock = FakeClock()
    shield = shield_with(rule(name="origin", rate=5, burst=10), clock=clock, redis=redis_server.url,
                         redis_timeout=0.05, circuit_break=2.0, penalty={"enabled": False})
    closing.append(shield)
    assert statuses(await flood(shield, 12)) == [200] * 10 + [429] * 2
    without_redis = shield.counters["fleet_unavailable"]  # a slow first connection may already have tripped it
    redis_server.kill()
    clock.advance(10)
    slowest, admitted = 0.0, 0
    for _ in range(200):
        started = time.monotonic()
        admitted += (await shield.admit("198.51.100.7", "GET", "/api", (), origin_bound=True)).allowed
        slowest = max(slowest, time.monotonic() - started)
    assert admitted == 10  # the local limit: the burst, no more (the clock stood still)
    assert slowest < 1.0  # generous: the first decision meets the dead connection, the rest skip Redis
    stats = shield.snapshot()
    assert stats["redis"]["errors"] + stats["redis"]["timeouts"] >= 1
    assert stats["counters"]["fleet_unavailable"] - without_redis == 10  # the admitted ones went on without Redis
    assert stats["counters"]["local_rejections"] >= 190 and stats["redis"]["circuit_open_for"] > 0
    assert completes_without_suspending(shield.admit("192.0.2.1", "GET", "/", (), origin_bound=True)).allowed

    redis_server.start()
    clock.advance(2.0)  # the circuit closes
    trips = stats["redis"]["round_trips"]
    assert (await shield.admit("192.0.2.2", "GET", "/", (), origin_bound=True)).allowed
    assert shield.snapshot()["redis"]["round_trips"] > trips  # asked Redis again (and reloaded the script)


async def test_fleet_rules_refuse_while_redis_is_down_when_set_to(closing: list[Shield]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    shield = Shield(ShieldSettings(fleet_unavailable="refuse"), redis=dead)
    closing.append(shield)
    refused = await shield.admit("192.0.2.1", "GET", "/", (), origin_bound=True)
    assert (refused.status, refused.reason, refused.shed) == (503, "fleet-unavailable", True)
    assert dict(refused.headers)[b"retry-after"] == b"2"
    assert (await shield.admit("192.0.2.1", "GET", "/", (), origin_bound=False)).allowed  # hits never ask Redis


async def test_an_unresponsive_redis_costs_one_timeout_then_the_circuit_opens(closing: list[Shield]) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        shield = Shield(ShieldSettings(redis_timeout=0.05, circuit_break=30), redis=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        closing.append(shield)
        started = time.monotonic()
        decision = await shield.admit("192.0.2.1", "GET", "/", (), origin_bound=True)
        assert time.monotonic() - started < 1.0  # about the 50 ms timeout; generous for a noisy machine
        assert decision.allowed  # the local limit decided
        assert completes_without_suspending(shield.admit("192.0.2.1", "GET", "/", (), origin_bound=True)).allowed
        stats = shield.snapshot()["redis"]
        assert stats["timeouts"] >= 1 and stats["circuit_open_for"] > 20


def test_a_shield_closed_with_one_event_loop_works_in_the_next(redis_server: RedisServer) -> None:
    shield = Shield(ShieldSettings(redis_timeout=2.0), redis=redis_server.url)

    async def serve(client: str) -> dict[str, Any]:
        assert (await shield.admit(client, "GET", "/", (), origin_bound=True)).allowed
        stats = dict(shield.snapshot()["redis"])
        await shield.close()  # as the edge does at shutdown
        return stats

    first = asyncio.run(serve("192.0.2.1"))
    second = asyncio.run(serve("192.0.2.2"))
    assert second["decisions"] == first["decisions"] + 1 and second["errors"] == 0


async def test_keys_in_redis_expire_when_idle(redis_server: RedisServer, closing: list[Shield]) -> None:
    import redis.asyncio as aioredis

    shield = Shield(ShieldSettings(rules=[rule(name="origin", rate=2, burst=2)], redis_timeout=2.0),
                    redis=redis_server.url, prefix="t:")
    closing.append(shield)
    await shield.admit("192.0.2.1", "GET", "/", (), origin_bound=True)
    client = aioredis.from_url(redis_server.url)
    try:
        (key,) = await client.keys("t:shield:origin:*")
        assert 0 < await client.pttl(key) <= 500  # the TAT is one interval ahead: the key is idle again then
        await asyncio.sleep(0.8)
        assert await client.exists(key) == 0
    finally:
        await client.aclose()


async def test_snapshot_is_plain_json(redis_server: RedisServer, closing: list[Shield]) -> None:
    clock = FakeClock()
    shield = shield_with(rule(name="origin", rate=1, burst=1), rule(name="budget", key=[], rate=100, burst=100,
                                                                      action="shed"),
                         clock=clock, redis=redis_server.url, redis_timeout=2.0, penalty={"violations": 1})
    closing.append(shield)
    await flood(shield, 4)
    snapshot = json.loads(json.dumps(shield.snapshot()))
    assert snapshot["decisions"]["origin"] == {"allowed": 1, "rejected": 2}
    assert snapshot["counters"]["banned"] == 1 and snapshot["bans"][0]["client"] == "198.51.100.7"
    assert snapshot["redis"]["round_trips"] >= 1 and snapshot["redis"]["errors"] == 0
    assert [r["name"] for r in snapshot["rules"]] == ["origin", "budget"]
