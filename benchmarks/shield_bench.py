"""What the shield's `admit` costs per decision, in process, beside a baseline; and how many Redis round trips it makes.

(a) A hit with the default rules (no rule applies to hits): `admit(..., origin_bound=False)`
    against a no-op coroutine and a no-op function call with the same arguments; and
    `client_ip(scope)` from a socket peer, and from X-Forwarded-For behind a trusted proxy.
(b) Origin-bound requests under the limit (the default rule, a new client each time), with a
    redis-server on loopback: one at a time, then 64 in flight. Baselines, taking turns with ours in
    chunks: the same GCRA script called with bare redis-py EVALSHA, and bare PINGs, the same way.
    Round trips per decision.
(c) A flood from one client over the limit through one edge, then through two edges sharing Redis:
    Redis round trips per request (goal: far below one), and the cost per decision against (a)'s
    no-op coroutine. The penalty box is off, else the client is banned after 50 refusals and the
    flood measures a dict lookup.

Rounds interleave ours and the baseline; the table gives medians over the rounds.

    .venv/bin/python benchmarks/shield_bench.py [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.headers import Headers  # noqa: E402
from edge.shield import Shield, ShieldSettings  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

CONCURRENCY = 64
HEADERS = Headers([("host", "shop.example"), ("user-agent", "bench"), ("accept", "*/*")])


def noop(client: str | None, method: str, path: str, headers: object, origin_bound: bool = False) -> None:
    return None


async def noop_async(client: str | None, method: str, path: str, headers: object, origin_bound: bool = False) -> None:
    return None


async def per_call(fn: Callable[[int], Awaitable[None]], n: int) -> float:
    """Seconds per call of `fn(i)` over n calls."""
    started = time.perf_counter()
    await fn(n)
    return (time.perf_counter() - started) / n


def client_name(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# -- (a) ------------------------------------------------------------------------------------

async def hits(rounds: int, n: int) -> dict[str, float]:
    shield = Shield(ShieldSettings())
    behind_proxy = Shield(ShieldSettings(trusted_proxies=["10.0.0.0/8"]))
    peer_scope = {"type": "http", "client": ("192.0.2.44", 50000), "headers": HEADERS.raw()}
    proxied_scope = {"type": "http", "client": ("10.0.0.2", 50000),
                     "headers": HEADERS.raw() + [(b"x-forwarded-for", b"198.51.100.1, 203.0.113.9, 10.0.0.7")]}

    async def sync_noop(n: int) -> None:
        for _ in range(n):
            noop("192.0.2.44", "GET", "/static/app.js", HEADERS)

    async def async_noop(n: int) -> None:
        for _ in range(n):
            await noop_async("192.0.2.44", "GET", "/static/app.js", HEADERS)

    async def admit(n: int) -> None:
        for _ in range(n):
            await shield.admit("192.0.2.44", "GET", "/static/app.js", HEADERS)

    async def peer(n: int) -> None:
        for _ in range(n):
            shield.client_ip(peer_scope)

    async def proxied(n: int) -> None:
        for _ in range(n):
            behind_proxy.client_ip(proxied_scope)

    samples: dict[str, list[float]] = {k: [] for k in ("noop", "noop_async", "admit", "client_ip", "client_ip_xff")}
    for _ in range(rounds):
        samples["noop"].append(await per_call(sync_noop, n))
        samples["noop_async"].append(await per_call(async_noop, n))
        samples["admit"].append(await per_call(admit, n))
        samples["client_ip"].append(await per_call(peer, n))
        samples["client_ip_xff"].append(await per_call(proxied, n // 10))
    return {k: statistics.median(v) for k, v in samples.items()}


# -- (b) ------------------------------------------------------------------------------------

async def interleaved(runs: dict[str, Callable[[int], Awaitable[None]]], n: int, chunk: int) -> dict[str, float]:
    """Seconds per call of each run, taking turns in chunks so that a noisy neighbour slows each alike."""
    spent = dict.fromkeys(runs, 0.0)
    for _ in range(n // chunk):
        for name, run in runs.items():
            spent[name] += await per_call(run, chunk) * chunk
    return {name: total / (n // chunk * chunk) for name, total in spent.items()}


async def under_limit(redis_url: str, rounds: int, n: int) -> dict[str, float]:
    import redis.asyncio as aioredis

    from edge.shield.fleet import GCRA_SCRIPT, GCRA_SHA

    shield = Shield(ShieldSettings(redis_timeout=1.0), redis=redis_url, prefix="bench:")
    bare = aioredis.from_url(redis_url)
    counter = iter(range(10**9))
    await shield.admit(client_name(next(counter)), "GET", "/api", HEADERS, origin_bound=True)  # connect, load script
    await bare.script_load(GCRA_SCRIPT)
    interval, tolerance = repr(1000 / 20), repr(1000 * 40 / 20)  # the default rule's, in ms

    async def admit(k: int) -> None:
        for _ in range(k):
            decision = await shield.admit(client_name(next(counter)), "GET", "/api", HEADERS, origin_bound=True)
            assert decision.allowed

    async def evalsha(k: int) -> None:
        for _ in range(k):
            await bare.evalsha(GCRA_SHA, 1, f"bench:bare:{next(counter)}", "", interval, tolerance, "1")

    async def ping(k: int) -> None:
        for _ in range(k):
            await bare.ping()

    def in_flight(run: Callable[[int], Awaitable[None]]) -> Callable[[int], Awaitable[None]]:
        async def concurrently(k: int) -> None:
            await asyncio.gather(*(run(k // CONCURRENCY) for _ in range(CONCURRENCY)))
        return concurrently

    stats = shield.fleet.stats  # type: ignore[union-attr]
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        trips, decided = stats["round_trips"], stats["decisions"]
        one = await interleaved({"seq": admit, "seq_evalsha": evalsha, "seq_ping": ping}, n, 200)
        one["trips_seq"] = (stats["round_trips"] - trips) / (stats["decisions"] - decided)
        trips, decided = stats["round_trips"], stats["decisions"]
        many = await interleaved({"conc": in_flight(admit), "conc_evalsha": in_flight(evalsha),
                                  "conc_ping": in_flight(ping)}, n, CONCURRENCY * 16)
        many["trips_conc"] = (stats["round_trips"] - trips) / (stats["decisions"] - decided)
        for key, value in {**one, **many}.items():
            samples.setdefault(key, []).append(value)
    errors = stats["errors"] + stats["timeouts"]
    await shield.close()
    await bare.aclose()
    return {**{k: statistics.median(v) for k, v in samples.items()}, "errors": errors}


# -- (c) ------------------------------------------------------------------------------------

async def flood(redis_url: str, rounds: int, n: int) -> dict[str, float]:
    settings = ShieldSettings(redis_timeout=1.0, penalty={"enabled": False})
    one = Shield(settings, redis=redis_url, prefix="bench-flood:")
    pair = [Shield(settings, redis=redis_url, prefix="bench-flood:") for _ in range(2)]

    async def through_one(n: int) -> None:
        for _ in range(n):
            await one.admit("198.51.100.66", "GET", "/api", HEADERS, origin_bound=True)

    async def through_two(n: int) -> None:
        async def edge(shield: Shield, k: int) -> None:
            for _ in range(k):
                await shield.admit("198.51.100.77", "GET", "/api", HEADERS, origin_bound=True)
                await asyncio.sleep(0)  # let the other edge's requests interleave
        await asyncio.gather(*(edge(s, n // 2) for s in pair))

    samples: dict[str, list[float]] = {k: [] for k in ("one", "two", "trips_one", "trips_two", "admitted_one")}
    for _ in range(rounds):
        before = one.fleet.stats["round_trips"], one.counters["admitted"]  # type: ignore[union-attr]
        samples["one"].append(await per_call(through_one, n))
        samples["trips_one"].append((one.fleet.stats["round_trips"] - before[0]) / n)  # type: ignore[union-attr]
        samples["admitted_one"].append(one.counters["admitted"] - before[1])
        before_two = sum(s.fleet.stats["round_trips"] for s in pair)  # type: ignore[union-attr]
        samples["two"].append(await per_call(through_two, n))
        samples["trips_two"].append((sum(s.fleet.stats["round_trips"] for s in pair) - before_two) / n)  # type: ignore[union-attr]
    for shield in (one, *pair):
        await shield.close()
    return {k: statistics.median(v) for k, v in samples.items()}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:8.2f} us"


def rate(seconds: float) -> str:
    return f"{1 / seconds:>12,.0f}/s"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one round of smaller runs")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    scale = 10 if args.quick else 1

    print(f"shield micro benchmark: {rounds} round(s), medians; one process, one event loop")
    a = await hits(rounds, 200_000 // scale)
    print("\n(a) a hit, default rules (no rule applies to hits)")
    print(f"  no-op function call        {us(a['noop'])}  {rate(a['noop'])}")
    print(f"  no-op coroutine (baseline) {us(a['noop_async'])}  {rate(a['noop_async'])}")
    print(f"  shield.admit               {us(a['admit'])}  {rate(a['admit'])}   "
          f"x{a['admit'] / a['noop_async']:.2f} the no-op coroutine, x{a['admit'] / a['noop']:.2f} the function call")
    print(f"  shield.client_ip (peer)    {us(a['client_ip'])}  {rate(a['client_ip'])}   "
          f"x{a['client_ip'] / a['noop']:.2f} the function call")
    print(f"  client_ip (XFF, 3 hops)    {us(a['client_ip_xff'])}  {rate(a['client_ip_xff'])}   "
          f"x{a['client_ip_xff'] / a['noop']:.2f} the function call")

    with tempfile.TemporaryDirectory() as scratch:
        redis = RedisServer(Path(scratch)).start()
        try:
            b = await under_limit(redis.url, rounds, 2_048 if scale == 1 else 1_024)
            c = await flood(redis.url, rounds, 40_000 // scale)
        finally:
            redis.kill()

    print("\n(b) origin-bound, under the limit, with Redis (each decision is one EVALSHA of the GCRA script)")
    for label, key in (("one at a time", "seq"), (f"{CONCURRENCY} in flight ", "conc")):
        print(f"  {label}: admit       {us(b[key])}  {rate(b[key])}   round trips per decision {b['trips_' + key]:.3f}")
        print(f"  {' ' * len(label)}  bare EVALSHA {us(b[key + '_evalsha'])}  {rate(b[key + '_evalsha'])}   "
              f"admit x{b[key] / b[key + '_evalsha']:.2f} the same script called bare")
        print(f"  {' ' * len(label)}  bare PING   {us(b[key + '_ping'])}  {rate(b[key + '_ping'])}   "
              f"admit x{b[key] / b[key + '_ping']:.2f} a bare round trip")
    if b["errors"]:
        print(f"  WARNING: {b['errors']:.0f} Redis errors or timeouts (decided locally)")

    print("\n(c) one client flooding over the limit (20/s, burst 40), with Redis")
    print(f"  through one edge:          {us(c['one'])}  {rate(c['one'])}   round trips per request {c['trips_one']:.4f}"
          f"   x{c['one'] / a['noop_async']:.1f} the no-op coroutine; admitted per round {c['admitted_one']:.0f}")
    print(f"  through two edges:         {us(c['two'])}  {rate(c['two'])}   round trips per request {c['trips_two']:.4f}")


if __name__ == "__main__":
    asyncio.run(main())
