"""Latency and fault injection: what to do to a request, decided from settings and a random source.

The policy only decides; `origin_mock.middleware.FaultInjection` does the sleeping
and the breaking. The random source is injectable so tests can script every draw.
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

LIGHT_SPEED_KM_S = 299_792.458
# Signals in fibre travel at about two thirds of the speed of light in vacuum.
SIGNAL_SPEED_KM_S = LIGHT_SPEED_KM_S * 2 / 3


def round_trip_ms(distance_km: float) -> float:
    """Round-trip time in milliseconds over `distance_km` at two thirds of light speed."""
    return 2 * distance_km / SIGNAL_SPEED_KM_S * 1000


class Fault(enum.Enum):
    """What goes wrong with one response (NONE: nothing)."""

    NONE = "none"
    HANG = "hang"
    ERROR = "error"
    CUTOFF = "cutoff"
    SLOW_BODY = "slow_body"


class FaultSettings(BaseModel):
    """Latency and fault knobs; settable at start-up and at run time (`POST /_origin/faults`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(0.0, ge=0, description="fixed delay added before every /api and /static response, ms")
    latency_jitter_ms: float = Field(0.0, ge=0, description="random extra delay, uniform in [0, this), ms")
    distance_km: float = Field(0.0, ge=0, le=20_038, description="modelled client distance; adds its round trip at 2/3 light speed")
    error_rate: float = Field(0.0, ge=0, le=1, description="probability of answering 500 or 503")
    hang_rate: float = Field(0.0, ge=0, le=1, description="probability of never answering (until hang_seconds or disconnect)")
    hang_seconds: float = Field(3600.0, gt=0, description="how long a hung request sleeps before answering after all")
    slow_body_rate: float = Field(0.0, ge=0, le=1, description="probability of trickling the body at slow_body_bytes_per_second")
    slow_body_bytes_per_second: int = Field(16384, ge=1, description="body rate of a slow response, bytes per second")
    cutoff_rate: float = Field(0.0, ge=0, le=1, description="probability of sending half the body, then dropping the connection")


class FaultPolicy:
    """Decides each request's delay and fault from `FaultSettings` and a random source in [0, 1)."""

    active: bool  # False when no delay or fault can happen, so requests skip the policy entirely

    def __init__(self, settings: FaultSettings, random: Callable[[], float] | None = None) -> None:
        self._random = random or _random.Random().random
        self.settings = settings

    @property
    def settings(self) -> FaultSettings:
        """The knobs in force; assigning new ones takes effect on the next request."""
        return self._settings

    @settings.setter
    def settings(self, settings: FaultSettings) -> None:
        self._settings = settings
        self.active = bool(
            settings.latency_ms or settings.latency_jitter_ms or settings.distance_km
            or settings.error_rate or settings.hang_rate or settings.slow_body_rate or settings.cutoff_rate
        )

    def delay_seconds(self) -> float:
        """Delay before answering: fixed latency, jitter and the distance's round trip."""
        s = self.settings
        ms = s.latency_ms + round_trip_ms(s.distance_km)
        if s.latency_jitter_ms:
            ms += s.latency_jitter_ms * self._random()
        return ms / 1000

    def choose(self) -> Fault:
        """The fault for one request; each kind is drawn in turn and the first hit wins."""
        s = self.settings
        # A draw only for rates that are set, so a fault-free origin never touches the source.
        for fault, rate in (
            (Fault.HANG, s.hang_rate),
            (Fault.ERROR, s.error_rate),
            (Fault.CUTOFF, s.cutoff_rate),
            (Fault.SLOW_BODY, s.slow_body_rate),
        ):
            if rate and self._random() < rate:
                return fault
        return Fault.NONE

    def error_status(self) -> int:
        """Status of an injected error: 500 or 503, evenly."""
        return 500 if self._random() < 0.5 else 503
