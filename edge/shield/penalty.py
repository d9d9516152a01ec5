"""The penalty box: a client refused more than `violations` times within `window` seconds is banned for `ban` seconds.

Refusals are counted with a GCRA of rate violations/window and burst
violations, so the (violations + 1)-th refusal inside any window bans. Bans
are per edge: they cost no Redis round trip, and a client is banned at each
edge it keeps abusing. A ban is not extended by requests refused during it.
"""

from __future__ import annotations

from edge.shield.gcra import Gcra, LocalLimiter
from edge.shield.settings import PenaltySettings


class PenaltyBox:
    """Refusal counts and bans of clients, by the client's name (an address or an IPv6 prefix)."""

    def __init__(self, settings: PenaltySettings, max_clients: int = 100_000) -> None:
        self.enabled = settings.enabled
        self.ban_seconds = settings.ban
        self.gcra = Gcra(settings.violations / settings.window, settings.violations)
        self.refusals = LocalLimiter(max_clients)
        self.bans: dict[str, float] = {}  # client -> banned until
        self.bans_issued = 0

    def banned_for(self, client: str, now: float) -> float:
        """Seconds `client` stays banned (0: not banned)."""
        until = self.bans.get(client)
        if until is None:
            return 0.0
        if until <= now:
            del self.bans[client]
            return 0.0
        return until - now

    def record_refusal(self, client: str, now: float) -> bool:
        """Count one refusal of `client`; True when it earned a ban."""
        if not self.enabled or client in self.bans:
            return False
        if self.refusals.check(client, self.gcra, now).allowed:
            return False
        if len(self.bans) > 10_000:
            self.bans = {c: t for c, t in self.bans.items() if t > now}
        self.bans[client] = now + self.ban_seconds
        self.bans_issued += 1
        self.refusals.tats.pop(client, None)  # after the ban, counting starts afresh
        return True

    def active(self, now: float) -> list[dict[str, float | str]]:
        """Current bans, soonest to end first."""
        live = sorted((t, c) for c, t in self.bans.items() if t > now)
        return [{"client": c, "expires_in": round(t - now, 3)} for t, c in live]
