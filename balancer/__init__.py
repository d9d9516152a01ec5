"""Load balancing and health checking for a pool of servers: the edge's origins, the front door's edges.

    pool = OriginPool(settings.pool)           # PoolSettings
    await pool.start()                         # background health checks
    member = pool.pick(key=cache_key)          # None: no member available
    with pool.attempt(member) as attempt:      # in flight until the block ends
        response = await send(member.url + path)
        attempt.responded(response.status_code)
    await pool.stop()
"""

from balancer.health import HealthChecker
from balancer.member import LoadReport, Member
from balancer.pool import Attempt, Failure, OriginPool, failure_of
from balancer.ring import HashRing, stable_hash
from balancer.settings import AlgorithmName, HealthCheckSettings, MemberSettings, PassiveSettings, PoolSettings

__all__ = [
    "AlgorithmName", "Attempt", "Failure", "HashRing", "HealthCheckSettings", "HealthChecker", "LoadReport",
    "Member", "MemberSettings", "OriginPool", "PassiveSettings", "PoolSettings", "failure_of", "stable_hash",
]
