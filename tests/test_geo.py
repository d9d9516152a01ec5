"""The latency model: great-circle distance, round-trip time, the region table and coordinate parsing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.geo import (
    EARTH_RADIUS_KM,
    MAX_DISTANCE_KM,
    REGIONS,
    Coordinates,
    by_distance,
    great_circle_km,
    parse_coordinates,
    round_trip_ms,
    rtt_ms,
    valid_coordinates,
)

LONDON = Coordinates(51.5074, -0.1278)
PARIS = Coordinates(48.8566, 2.3522)
NEW_YORK = Coordinates(40.7128, -74.0060)
SYDNEY = Coordinates(-33.8688, 151.2093)
places = st.builds(Coordinates, st.floats(-90, 90), st.floats(-180, 180))


@pytest.mark.parametrize(("a", "b", "km"), [
    (LONDON, PARIS, 344),
    (LONDON, NEW_YORK, 5570),
    (NEW_YORK, SYDNEY, 15_989),
    (Coordinates(0, 0), Coordinates(0, 90), math.pi / 2 * EARTH_RADIUS_KM),  # a quarter of the equator
    (Coordinates(90, 0), Coordinates(-90, 0), MAX_DISTANCE_KM),  # pole to pole
])
def test_great_circle_distance_of_known_pairs(a: Coordinates, b: Coordinates, km: float) -> None:
    assert great_circle_km(a, b) == pytest.approx(km, rel=0.005)


def test_distance_across_the_date_line_is_short() -> None:
    assert great_circle_km(Coordinates(0, 179.5), Coordinates(0, -179.5)) == pytest.approx(111.2, rel=0.01)


@given(places, places)
def test_distance_is_symmetric_and_bounded(a: Coordinates, b: Coordinates) -> None:
    d = great_circle_km(a, b)
    assert 0 <= d <= MAX_DISTANCE_KM + 1e-6
    assert d == pytest.approx(great_circle_km(b, a), abs=1e-6)


@given(places, places, places)
def test_distance_obeys_the_triangle_inequality(a: Coordinates, b: Coordinates, c: Coordinates) -> None:
    assert great_circle_km(a, c) <= great_circle_km(a, b) + great_circle_km(b, c) + 1e-6


def test_round_trip_is_two_thirds_of_light_speed_both_ways_plus_hop_overhead() -> None:
    assert round_trip_ms(0) == 0
    assert round_trip_ms(1000) == pytest.approx(2 * 1000 / (299_792.458 * 2 / 3) * 1000)  # ≈ 10 ms
    assert round_trip_ms(1000, hops=3, hop_overhead_ms=1.5) == pytest.approx(round_trip_ms(1000) + 4.5)


def test_rtt_between_places_includes_one_hop_by_default() -> None:
    assert rtt_ms(LONDON, LONDON) == pytest.approx(1.0)
    assert rtt_ms(LONDON, NEW_YORK) == pytest.approx(round_trip_ms(great_circle_km(LONDON, NEW_YORK)) + 1.0)
    assert 55 < rtt_ms(LONDON, NEW_YORK) < 58  # the textbook floor for a transatlantic round trip


@pytest.mark.parametrize("km", [0, 1, 100, 5570, 20_000])
def test_round_trip_without_hops_is_what_the_origin_mock_uses_today(km: float) -> None:
    from origin_mock.faults import round_trip_ms as origin_round_trip_ms

    assert round_trip_ms(km) == pytest.approx(origin_round_trip_ms(km))


def test_the_region_table_is_on_earth_and_lower_case() -> None:
    assert {"us-east", "us-west", "eu-west", "eu-central", "ap-southeast", "ap-northeast", "sa-east"} <= set(REGIONS)
    for name, where in REGIONS.items():
        assert name == name.lower() and valid_coordinates(*where)


@pytest.mark.parametrize(("client", "nearest"), [
    (LONDON, "eu-london"),
    (PARIS, "eu-london"),
    (Coordinates(48.14, 11.58), "eu-central"),  # Munich
    (Coordinates(38.91, -77.04), "us-east"),  # Washington
    (Coordinates(37.77, -122.42), "us-west"),  # San Francisco
    (Coordinates(-34.60, -58.38), "sa-east"),  # Buenos Aires
    (Coordinates(3.14, 101.69), "ap-southeast"),  # Kuala Lumpur
    (Coordinates(37.57, 126.98), "ap-northeast"),  # Seoul
    (SYDNEY, "au-southeast"),
    (Coordinates(-1.29, 36.82), "me-central"),  # Nairobi: Dubai is nearer than Cape Town
])
def test_nearest_region_of_clients_around_the_world(client: Coordinates, nearest: str) -> None:
    ranked = by_distance(client, REGIONS)
    assert ranked[0][0] == nearest
    assert [km for _, km in ranked] == sorted(km for _, km in ranked)


@pytest.mark.parametrize(("text", "expected"), [
    ("51.5,-0.12", Coordinates(51.5, -0.12)),
    (" 51.5 , -0.12 ", Coordinates(51.5, -0.12)),
    ("-90,180", Coordinates(-90, 180)),
    ("+1,.5", Coordinates(1, 0.5)),
    ("0,0", Coordinates(0, 0)),
])
def test_coordinates_parse(text: str, expected: Coordinates) -> None:
    assert parse_coordinates(text) == expected


@pytest.mark.parametrize("text", [
    "", " ", ",", "51.5", "51.5,", ",0", "51.5,-0.12,3", "51.5;-0.12", "51.5 -0.12", "abc,def",
    "nan,0", "0,nan", "inf,0", "-inf,0", "1e1,2", "0x10,0", "1_0,0", "91,0", "-90.5,0", "0,180.01", "0,-181",
    "٣,٤",  # Arabic-Indic digits: float() would take them
    "1" * 1000 + ",0",
])
def test_malformed_coordinates_are_refused(text: str) -> None:
    assert parse_coordinates(text) is None


@given(st.text(max_size=80))
def test_any_text_parses_to_valid_coordinates_or_none(text: str) -> None:
    parsed = parse_coordinates(text)
    assert parsed is None or valid_coordinates(*parsed)
