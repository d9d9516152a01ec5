"""Request size limits: 414 for a long target, 431 for too many or too large header fields, 413 for a large body.

Pure: an ASGI scope in, an answer out. Only a declared Content-Length is
checked here; a chunked body is counted by the request path while it reads it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from edge.shield.settings import SizeLimits

class SizeCheck:
    """`check_size` for one set of limits, read once from their settings (which cost more to read than plain ints)."""

    __slots__ = ("max_target", "max_count", "max_bytes", "max_body")

    def __init__(self, limits: SizeLimits) -> None:
        self.max_target = limits.max_url_length
        self.max_count = limits.max_header_count
        self.max_bytes = limits.max_header_bytes
        self.max_body = limits.max_body

    def __call__(self, scope: MutableMapping[str, Any]) -> tuple[int, str] | None:
        """(status, message) when the request is over a limit, else None."""
        path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
        query = scope.get("query_string")
        target = len(path) + (len(query) + 1 if query else 0)
        if target > self.max_target:
            return 414, f"request target of {target} bytes is longer than {self.max_target}"
        headers = scope.get("headers") or ()
        if len(headers) > self.max_count:
            return 431, f"{len(headers)} header fields are more than {self.max_count}"
        total = 0
        declared = None
        for name, value in headers:
            total += len(name) + len(value)
            if name == b"content-length":
                declared = value
        if total > self.max_bytes:
            return 431, f"header fields of {total} bytes are larger than {self.max_bytes}"
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body:
            # A malformed Content-Length is the HTTP server's to refuse (400), not a size question.
            return 413, f"request body of {int(declared)} bytes is larger than {self.max_body}"
        return None


DEFAULT_CHECK = SizeCheck(SizeLimits())


def check_size(scope: MutableMapping[str, Any], limits: SizeLimits | None = None) -> tuple[int, str] | None:
    """(status, message) when the request is over a limit (default: the default limits), else None."""
    return (DEFAULT_CHECK if limits is None else SizeCheck(limits))(scope)
