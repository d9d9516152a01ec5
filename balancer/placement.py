"""Where a client is: from a location header, its address (a CIDR → region table), or a default region.

Pure: header values and an address in, a `Placement` out, never an exception.
A header that cannot be read is ignored, as if it had not been sent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from balancer.geo import Coordinates, parse_coordinates

GEO_HEADER = "x-client-geo"  # "lat,lon"
REGION_HEADER = "x-client-region"  # a region name
MAX_REGION_NAME = 64


class PlacedBy(StrEnum):
    """What a client's location was taken from."""

    GEO_HEADER = "geo-header"
    REGION_HEADER = "region-header"
    CIDR = "cidr"
    DEFAULT = "default"
    UNPLACED = "unplaced"  # nothing said where: every region is equally far


@dataclass(frozen=True, slots=True)
class Placement:
    """A client's location, how it was found, and its region when it was named."""

    location: Coordinates | None
    placed_by: PlacedBy
    region: str | None = None


UNPLACED = Placement(None, PlacedBy.UNPLACED)


class CidrTable:
    """Longest-prefix match of an address against CIDR blocks, one dictionary lookup per prefix length."""

    def __init__(self, blocks: Mapping[str, str]) -> None:
        by_length: dict[tuple[int, int], dict[int, str]] = {}
        for cidr, region in blocks.items():
            network = ipaddress.ip_network(cidr.strip(), strict=False)
            by_length.setdefault((network.version, network.prefixlen), {})[int(network.network_address)] = region
        # Longest prefixes first, so the most specific block wins.
        self._tables = sorted(((version, length, table) for (version, length), table in by_length.items()),
                              key=lambda entry: -entry[1])

    def __bool__(self) -> bool:
        return bool(self._tables)

    def region_of(self, address: str) -> str | None:
        """The region of the most specific block containing `address`; None if none does or it is no IP address."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone index
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value, bits = int(ip), ip.max_prefixlen
        for version, length, table in self._tables:
            if version == ip.version:
                region = table.get(value >> (bits - length) << (bits - length))
                if region is not None:
                    return region
        return None


def normalise_region(name: str) -> str:
    """Region names compare case-insensitively and without surrounding blanks."""
    return name.strip().lower()


def place_client(geo: str | None, region: str | None, address: str | None, cidr: CidrTable,
                 regions: Mapping[str, Coordinates], default_region: str | None = None) -> Placement:
    """Locate a client: `X-Client-Geo`, else `X-Client-Region`, else its address's CIDR block, else the default.

    `regions` maps normalised region names to their locations; a named region
    missing from it cannot place anyone, and the next source is tried.
    """
    if geo is not None:
        location = parse_coordinates(geo)
        if location is not None:
            return Placement(location, PlacedBy.GEO_HEADER)
    if region is not None and len(region) <= MAX_REGION_NAME:
        name = normalise_region(region)
        if name in regions:
            return Placement(regions[name], PlacedBy.REGION_HEADER, name)
    if address and cidr:
        name = cidr.region_of(address)
        if name is not None and (name := normalise_region(name)) in regions:
            return Placement(regions[name], PlacedBy.CIDR, name)
    if default_region is not None and (name := normalise_region(default_region)) in regions:
        return Placement(regions[name], PlacedBy.DEFAULT, name)
    return UNPLACED
