"""Where things are and what distance costs: great-circle distance, round-trip time, well-known regions.

Pure functions of coordinates. The front door ranks regions with them, the
origin mock delays answers with `round_trip_ms`, and the workload generator
models what each client would wait.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import NamedTuple

EARTH_RADIUS_KM = 6371.0  # mean radius (IUGG)
LIGHT_SPEED_KM_S = 299_792.458
# Signals in fibre travel at about two thirds of the speed of light in vacuum.
SIGNAL_SPEED_KM_S = LIGHT_SPEED_KM_S * 2 / 3
HOP_OVERHEAD_MS = 1.0  # switching, queueing and processing added per network hop, per round trip
MAX_DISTANCE_KM = math.pi * EARTH_RADIUS_KM  # half the circumference: the farthest two places can be


class Coordinates(NamedTuple):
    """A place on Earth in decimal degrees (WGS 84)."""

    latitude: float
    longitude: float


def valid_coordinates(latitude: float, longitude: float) -> bool:
    """Whether both are finite and within range (latitude ±90, longitude ±180)."""
    return (math.isfinite(latitude) and math.isfinite(longitude)
            and -90.0 <= latitude <= 90.0 and -180.0 <= longitude <= 180.0)


def great_circle_km(a: Coordinates, b: Coordinates) -> float:
    """Distance between two places along the Earth's surface (haversine on a sphere of radius 6371 km)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.latitude, a.longitude, b.latitude, b.longitude))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    # min(): rounding can push h a hair above 1 for antipodal points.
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, h)))


def round_trip_ms(distance_km: float, hops: int = 0, hop_overhead_ms: float = HOP_OVERHEAD_MS) -> float:
    """Round-trip time over `distance_km` at two thirds of light speed, plus `hop_overhead_ms` per hop."""
    return 2 * distance_km / SIGNAL_SPEED_KM_S * 1000 + hops * hop_overhead_ms


def rtt_ms(a: Coordinates, b: Coordinates, hops: int = 1, hop_overhead_ms: float = HOP_OVERHEAD_MS) -> float:
    """Modelled round-trip time between two places, `hops` network hops apart."""
    return round_trip_ms(great_circle_km(a, b), hops, hop_overhead_ms)


def by_distance(location: Coordinates, places: Mapping[str, Coordinates]) -> list[tuple[str, float]]:
    """Every place with its distance from `location`, nearest first (ties by name)."""
    return sorted(((name, great_circle_km(location, where)) for name, where in places.items()),
                  key=lambda entry: (entry[1], entry[0]))


# Cloud regions by the city their data centres are near; settings may add or move any.
REGIONS: dict[str, Coordinates] = {
    "us-east": Coordinates(39.04, -77.49),  # Ashburn, Virginia
    "us-central": Coordinates(41.26, -95.86),  # Council Bluffs, Iowa
    "us-west": Coordinates(45.84, -119.70),  # Boardman, Oregon
    "ca-central": Coordinates(45.50, -73.57),  # Montréal
    "sa-east": Coordinates(-23.55, -46.63),  # São Paulo
    "eu-west": Coordinates(53.35, -6.26),  # Dublin, Ireland
    "eu-london": Coordinates(51.51, -0.13),  # London
    "eu-central": Coordinates(50.11, 8.68),  # Frankfurt
    "eu-north": Coordinates(59.33, 18.07),  # Stockholm
    "me-central": Coordinates(25.20, 55.27),  # Dubai
    "af-south": Coordinates(-33.92, 18.42),  # Cape Town
    "ap-south": Coordinates(19.08, 72.88),  # Mumbai
    "ap-southeast": Coordinates(1.35, 103.82),  # Singapore
    "ap-east": Coordinates(22.32, 114.17),  # Hong Kong
    "ap-northeast": Coordinates(35.68, 139.69),  # Tokyo
    "au-southeast": Coordinates(-33.87, 151.21),  # Sydney
}

_NUMBER = r"[+-]?(?:[0-9]{1,3}(?:\.[0-9]{1,12})?|\.[0-9]{1,12})"  # ASCII digits only: no "nan", "1e3" or "٣"
_COORDINATES = re.compile(rf"[ \t]*({_NUMBER})[ \t]*,[ \t]*({_NUMBER})[ \t]*")
MAX_COORDINATES_TEXT = 64


def parse_coordinates(text: str) -> Coordinates | None:
    """`"lat,lon"` in decimal degrees (no exponents, NaN or infinities); None for anything else or out of range."""
    if len(text) > MAX_COORDINATES_TEXT:
        return None
    match = _COORDINATES.fullmatch(text)
    if match is None:
        return None
    latitude, longitude = float(match[1]), float(match[2])
    return Coordinates(latitude, longitude) if valid_coordinates(latitude, longitude) else None
