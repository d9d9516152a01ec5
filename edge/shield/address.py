"""Who the client is: the socket's address, or X-Forwarded-For when a trusted proxy put it there.

Only the entries appended by proxies we trust can be believed: walking
X-Forwarded-For from the right, each hop is trusted until the first address
outside the trusted ranges, and that one is the client. Anything a client
writes into the header lands to the left of it and is never read, so spoofing
buys nothing. IPv6 clients are counted per network prefix (a /64 by default),
since one subscriber holds a whole /64 and may rotate through it at will.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR = b"x-forwarded-for"


def parse_address(text: str) -> IPAddress | None:
    """An address as written in X-Forwarded-For or an ASGI scope ("1.2.3.4", "[::1]:80", "1.2.3.4:80"), or None."""
    text = text.strip().strip('"')
    if not text or len(text) > 64:
        return None
    if text.startswith("["):  # [v6]:port
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(text.split("%", 1)[0])
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


class ClientAddress:
    """Finds a request's client address from its ASGI scope, given the trusted proxy ranges."""

    def __init__(self, trusted_proxies: Iterable[str] = (), ipv6_prefix: int = 64) -> None:
        self.trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxies)
        self.ipv6_prefix = ipv6_prefix
        # Peers, proxies and clients repeat (keep-alive, busy clients): each text is parsed once. Keyed by
        # the text, not the address: ipaddress objects hash slowly. Texts over 80 characters are never addresses.
        self._hop = functools.lru_cache(maxsize=65536)(self._read_hop)

    def __call__(self, scope: MutableMapping[str, Any]) -> str | None:
        """The client's name for rate limits and bans: an address, an IPv6 prefix, or None when unknown."""
        peer = scope.get("client")
        if not peer or not isinstance(peer[0], str):
            return None
        host = peer[0]
        address, trusted, name = self._hop(host) if len(host) <= 80 else (None, False, host)
        if address is None:
            return host  # not an IP address (a unix socket path, a test client's name): its own name
        if not trusted:
            return name
        return self.walk_forwarded_for(name, _field_lines(scope.get("headers", ())))

    def is_trusted(self, address: IPAddress) -> bool:
        """Whether `address` is one of our proxies."""
        return any(address.version == net.version and address in net for net in self.trusted)

    def walk_forwarded_for(self, peer_name: str, lines: Sequence[str]) -> str:
        """The name of the right-most address of X-Forwarded-For not in a trusted range (the peer is trusted)."""
        client = peer_name
        entries = ",".join(lines).split(",")
        for entry in reversed(entries):
            address, trusted, name = self._hop(entry) if len(entry) <= 80 else (None, False, "")
            if address is None:
                # A trusted hop wrote something that is not an address: believe nothing further left.
                break
            client = name
            if not trusted:
                break
        return client

    def name(self, address: IPAddress) -> str:
        """An address in normal form; an IPv6 one as its prefix when counted per prefix."""
        if isinstance(address, ipaddress.IPv6Address) and self.ipv6_prefix < 128:
            return str(ipaddress.IPv6Network((address, self.ipv6_prefix), strict=False))
        return str(address)

    def _read_hop(self, text: str) -> tuple[IPAddress | None, bool, str]:
        address = parse_address(text)
        if address is None:
            return None, False, ""
        return address, bool(self.trusted) and self.is_trusted(address), self.name(address)


def _field_lines(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    return [value.decode("latin-1") for name, value in headers if name.lower() == FORWARDED_FOR]
