"""Request accounting: what reached the origin, so offload can be measured from the outside."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any


class RequestStats:
    """Counts requests by path, method and status, bytes sent and faults injected since the last reset."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.in_flight = 0  # live, so never reset
        self.reset()

    def reset(self) -> None:
        """Start counting afresh."""
        self.total = 0
        self.bytes_sent = 0
        self.by_path: Counter[str] = Counter()
        self.by_method: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.since = self._clock()

    def request(self, method: str, path: str) -> None:
        """Count one request as it arrives."""
        self.total += 1
        self.by_path[path] += 1
        self.by_method[method] += 1

    def status(self, status: int) -> None:
        """Count the status of one response as it starts."""
        self.by_status[status] += 1

    def fault(self, kind: str) -> None:
        """Count one injected fault."""
        self.faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict."""
        return {
            "total": self.total,
            "by_path": dict(self.by_path),
            "by_method": dict(self.by_method),
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "bytes_sent": self.bytes_sent,
            "faults": dict(self.faults),
            "in_flight": self.in_flight,
            "since": self.since,
        }
