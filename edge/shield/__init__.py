"""The rate-limiting shield: size limits, client addresses behind trusted proxies, bans, and rate limits per
client, API key, path or anything combined, counted per edge and fleet-wide in Redis.

    settings.py  the rules and the rest of `[edge.shield]`
    gcra.py      the rate-limit algorithm, pure, and the per-edge counters
    fleet.py     the same algorithm as one Redis script, batched, with a circuit breaker
    rules.py     which requests a rule counts, and under which key
    address.py   the client's address (X-Forwarded-For from trusted proxies only)
    penalty.py   bans for clients that keep being refused
    decision.py  the answer, with Retry-After and the RateLimit fields
    sizes.py     414 / 431 / 413
    shield.py    `Shield`, which the request path calls; the fleet-wide error bound is stated there
"""

from edge.shield.decision import ADMITTED, Decision
from edge.shield.settings import PenaltySettings, RuleSettings, ShieldSettings, SizeLimits
from edge.shield.shield import Shield
from edge.shield.sizes import check_size

__all__ = ["ADMITTED", "Decision", "PenaltySettings", "RuleSettings", "Shield", "ShieldSettings", "SizeLimits",
           "check_size"]
