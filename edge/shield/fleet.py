"""Fleet-wide rate limits in Redis: the GCRA of `edge.shield.gcra`, run by one Lua script per decision.

One request's decision is one EVALSHA over every fleet counter it goes to,
all or nothing: when a counter that enforces refuses, none is charged. The
script reads the clock of the Redis server, so edges' clocks do not matter,
and keeps each counter's TAT under a PX expiry that ends when the counter is
idle again (given a clock of the caller's instead, as tests do, a minute
later: Redis expires keys by its own clock, and a counter that expired early
would admit more than the limit). A decision made while no other is out is
sent at once; those that arrive while one is out go together as one
pipeline, which changes no answer: every decision is still atomic in Redis.
A refusal is remembered until its retry-after, measured from before the
request was sent, so it ends no later than Redis' own, and the key's later
requests are refused without a round trip. A decision that gets no answer
within `timeout` falls back to the caller; a failure opens the circuit and
Redis is not tried for `circuit_break` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from edge.shield.gcra import Gcra, Verdict

log = logging.getLogger("cdn.edge.shield")

# KEYS: the counters (each holds a TAT in ms). ARGV[1]: now in ms, or "" for the server's clock; then for each
# counter i: ARGV[3i-1] interval ms, ARGV[3i] tolerance ms (burst x interval), ARGV[3i+1] "1" if it enforces.
# Returns 4 integers per counter: allowed (1/0), remaining, retry-after ms, reset ms.
GCRA_SCRIPT = """
local now
local linger = 0
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
  linger = 60000  -- Redis expires keys by its own clock, which the caller's does not follow
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local out, tats, refused = {}, {}, false
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 1])
  local tolerance = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local wait = new_tat - tolerance - now
  local j = 4 * (i - 1)
  if wait <= 1e-6 then
    tats[i] = new_tat
    out[j + 1] = 1
    out[j + 2] = math.floor((tolerance - (new_tat - now)) / interval + 1e-6)
    out[j + 3] = 0
    out[j + 4] = math.ceil(new_tat - now)
  else
    if ARGV[3 * i + 1] == '1' then refused = true end
    out[j + 1] = 0
    out[j + 2] = 0
    out[j + 3] = math.ceil(wait)
    out[j + 4] = math.ceil(tat - now)
  end
end
if not refused then
  for i, key in ipairs(KEYS) do
    if tats[i] then
      redis.call('SET', key, string.format('%.3f', tats[i]), 'PX', math.max(1, math.ceil(tats[i] - now)) + linger)
    end
  end
end
return out
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class FleetCheck:
    """One counter a decision goes to."""

    key: str  # the Redis key
    gcra: Gcra
    enforce: bool  # a refusal here refuses the request (and charges no counter)


@dataclass(slots=True)
class _Pending:
    checks: Sequence[FleetCheck]
    future: asyncio.Future[list[Verdict] | None]


class FleetLimiter:
    """Decides fleet counters in Redis for one edge: batched, remembered refusals, bounded waits, a circuit breaker."""

    def __init__(self, redis: Redis, *, timeout: float = 0.05, circuit_break: float = 2.0,
                 clock: Callable[[], float], server_clock: Callable[[], float] | None = None,
                 max_batch: int = 128, max_remembered: int = 100_000, owns_client: bool = True) -> None:
        self.redis = redis
        self.timeout = timeout
        self.circuit_break = circuit_break
        self.clock = clock
        self.server_clock = server_clock  # tests: a shared fake clock instead of Redis TIME
        self.max_batch = max_batch
        self.max_remembered = max_remembered
        self.owns_client = owns_client
        self.open_until = float("-inf")
        self.refusals: dict[str, tuple[float, float]] = {}  # key -> (refused until, idle at), edge clock
        self.stats = {"round_trips": 0, "decisions": 0, "errors": 0, "timeouts": 0, "unavailable": 0,
                      "remembered_refusals": 0}
        self.last_error = ""
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._in_flight = 0  # round trips out now
        self._args: dict[Gcra, tuple[str, str]] = {}

    @classmethod
    def from_url(cls, url: str, timeout: float, **kwargs: Any) -> FleetLimiter:
        """A limiter with its own client: no retries (the circuit breaker decides), socket timeouts as a backstop."""
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        from cdn.redis_url import redis_from_url

        client = redis_from_url(url, socket_connect_timeout=timeout, socket_timeout=max(timeout, 0.5),
                                retry=Retry(NoBackoff(), 0), health_check_interval=0)
        return cls(client, timeout=timeout, **kwargs)

    def unavailable_for(self, now: float) -> float:
        """Seconds the circuit stays open (0: Redis is tried)."""
        return max(0.0, self.open_until - now)

    def known_refusal(self, key: str, now: float) -> Verdict | None:
        """Redis refused `key` recently and would still refuse it now: its verdict, without asking."""
        entry = self.refusals.get(key)
        if entry is None:
            return None
        until, idle_at = entry
        if until <= now:
            del self.refusals[key]
            return None
        self.stats["remembered_refusals"] += 1
        return Verdict(False, 0, until - now, idle_at - now, idle_at)

    async def decide(self, checks: Sequence[FleetCheck]) -> list[Verdict] | None:
        """Redis' verdict for each counter, or None when Redis cannot answer within the timeout."""
        if self.clock() < self.open_until:
            self.stats["unavailable"] += 1
            return None
        if not self._in_flight:
            # Nothing out: ask at once, without handing over to the worker (a task switch each way).
            answers = await self._call([checks])
            return None if answers is None else answers[0]
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            if self._worker is not None and self._worker.get_loop() is not loop:
                self._queue.clear()  # the app runs in a new event loop: what the old one queued is gone
            self._wake = asyncio.Event()  # an Event belongs to the loop that first waits on it
            self._worker = loop.create_task(self._run(), name="shield-fleet")
        future: asyncio.Future[list[Verdict] | None] = loop.create_future()
        self._queue.append(_Pending(checks, future))
        self._wake.set()
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            self._failed("timeouts", "no answer in time")
            return None

    async def close(self) -> None:
        """Stop the worker and, if it is ours, close the client's connections (it reconnects if used again)."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, RuntimeError):
                pass  # RuntimeError: the worker's loop is gone (a test's loop closed first)
            self._worker = None
            self._queue.clear()
        if self.owns_client:
            await self.redis.aclose()

    # -- talking to Redis ---------------------------------------------------------------------
    async def _run(self) -> None:
        """The worker: decisions that arrived while others were out go together, as one pipeline."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [p for p in self._queue[: self.max_batch] if not p.future.done()]
            del self._queue[: self.max_batch]
            if not batch:
                continue
            answers = await self._call([p.checks for p in batch])
            for i, pending in enumerate(batch):
                if not pending.future.done():
                    pending.future.set_result(None if answers is None else answers[i])

    async def _call(self, batches: list[Sequence[FleetCheck]]) -> list[list[Verdict]] | None:
        """One round trip for these decisions (two more when Redis lacks the script); None when it failed."""
        self._in_flight += 1
        sent_at = self.clock()
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._send(batches)
        except TimeoutError:
            self._failed("timeouts", "no answer in time")
            return None
        except (RedisError, OSError) as exc:
            self._failed("errors", exc)
            return None
        except Exception as exc:  # nothing may escape onto the request path; counted and logged
            log.exception("shield: unexpected failure deciding in Redis")
            self._failed("errors", exc)
            return None
        finally:
            self._in_flight -= 1
        return [self._verdicts(checks, reply, sent_at) for checks, reply in zip(batches, replies)]

    def _failed(self, kind: str, problem: BaseException | str) -> None:
        # Too slow is as bad as down: stop asking for a while rather than make every request wait.
        self.stats[kind] += 1
        self.last_error = problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}".rstrip(": ")
        self.open_until = max(self.open_until, self.clock() + self.circuit_break)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_result(None)
        self._queue.clear()

    async def _send(self, batches: list[Sequence[FleetCheck]]) -> list[Any]:
        now = "" if self.server_clock is None else f"{self.server_clock() * 1000:.3f}"
        commands = [self._command(checks, now) for checks in batches]
        replies = await self._execute(commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:  # first use, or Redis restarted: load the script and send those again
            self.stats["round_trips"] += 1
            await self.redis.script_load(GCRA_SCRIPT)
            for i, reply in zip(missing, await self._execute([commands[i] for i in missing])):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        self.stats["decisions"] += len(commands)
        return replies

    async def _execute(self, commands: list[list[str | int]]) -> list[Any]:
        self.stats["round_trips"] += 1
        if len(commands) == 1:
            try:
                return [await self.redis.evalsha(*commands[0])]
            except NoScriptError as exc:
                return [exc]
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.evalsha(*command)
        return await pipe.execute(raise_on_error=False)

    def _command(self, checks: Sequence[FleetCheck], now: str) -> list[str | int]:
        args: list[str | int] = [GCRA_SHA, len(checks), *(c.key for c in checks), now]
        for check in checks:
            shape = self._args.get(check.gcra)
            if shape is None:
                shape = self._args[check.gcra] = (repr(check.gcra.interval * 1000), repr(check.gcra.tolerance * 1000))
            args += [shape[0], shape[1], "1" if check.enforce else "0"]
        return args

    def _verdicts(self, checks: Sequence[FleetCheck], reply: list[int], sent_at: float) -> list[Verdict]:
        verdicts = []
        for i, check in enumerate(checks):
            allowed, remaining, retry_ms, reset_ms = reply[4 * i: 4 * i + 4]
            idle_at = sent_at + reset_ms / 1000
            verdict = Verdict(bool(allowed), int(remaining), retry_ms / 1000, reset_ms / 1000, idle_at)
            if not verdict.allowed and check.enforce:
                self._remember(check.key, sent_at + verdict.retry_after, idle_at, sent_at)
            verdicts.append(verdict)
        return verdicts

    def _remember(self, key: str, until: float, idle_at: float, now: float) -> None:
        if len(self.refusals) >= self.max_remembered:
            self.refusals = {k: v for k, v in self.refusals.items() if v[0] > now}
            if len(self.refusals) >= self.max_remembered:
                return  # remembering is an optimisation: without it, Redis answers
        self.refusals[key] = (until, idle_at)
