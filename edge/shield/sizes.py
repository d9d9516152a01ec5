"""Request size limits: 414 for a long target, 431 for too many or too large header fields, 413 for a large body.

Pure: an ASGI scope in, an answer out. Only a declared Content-Length is
checked here; a chunked body is counted by the request path while it reads it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from edge.shield.settings import SizeLimits

DEFAULT_LIMITS = SizeLimits()


def check_size(scope: MutableMapping[str, Any], limits: SizeLimits = DEFAULT_LIMITS) -> tuple[int, str] | None:
    """(status, message) when the request is over a limit, else None."""
    path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
    query = scope.get("query_string") or b""
    target = len(path) + (len(query) + 1 if query else 0)
    if target > limits.max_url_length:
        return 414, f"request target of {target} bytes is longer than {limits.max_url_length}"
    headers = scope.get("headers") or ()
    if len(headers) > limits.max_header_count:
        return 431, f"{len(headers)} header fields are more than {limits.max_header_count}"
    total = 0
    declared = None
    for name, value in headers:
        total += len(name) + len(value)
        if name == b"content-length":
            declared = value
    if total > limits.max_header_bytes:
        return 431, f"header fields of {total} bytes are larger than {limits.max_header_bytes}"
    if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_body:
        # A malformed Content-Length is the HTTP server's to refuse (400), not a size question.
        return 413, f"request body of {int(declared)} bytes is larger than {limits.max_body}"
    return None
