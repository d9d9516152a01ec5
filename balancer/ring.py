"""A consistent hash ring with virtual nodes: a key keeps its node while other nodes come and go."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Mapping

VNODES_PER_WEIGHT = 160  # as ketama: enough points that each node's share is within a few percent of its weight's


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (unlike `hash()`, which is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Nodes own the arcs before their points on a 64-bit circle; a node's point count is its weight × `vnodes`."""

    def __init__(self, weights: Mapping[str, int], vnodes: int = VNODES_PER_WEIGHT) -> None:
        points = sorted((stable_hash(f"{node}#{i}"), node) for node, weight in weights.items()
                        for i in range(weight * vnodes))
        self._hashes = [h for h, _ in points]
        self._nodes = [node for _, node in points]
        self._node_count = len(weights)

    def lookup(self, key: str, eligible: Callable[[str], bool] = lambda node: True) -> str | None:
        """The first eligible node at or after the key's point, walking clockwise; None when no node is eligible."""
        if not self._nodes:
            return None
        start = bisect.bisect_left(self._hashes, stable_hash(key))
        seen: set[str] = set()
        for i in range(len(self._nodes)):
            node = self._nodes[(start + i) % len(self._nodes)]
            if node not in seen:
                if eligible(node):
                    return node
                seen.add(node)
                if len(seen) == self._node_count:
                    return None
        return None
