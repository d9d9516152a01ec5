"""Conditional requests as a real origin answers them (RFC 9110 §13): pure functions of header values."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

_ENTITY_TAG = re.compile(r'(W/)?("[^"]*")')


def _entity_tags(value: str) -> list[tuple[bool, str]]:
    """(is_weak, opaque_tag) for each entity tag in a list; malformed members are skipped."""
    return [(bool(weak), tag) for weak, tag in _ENTITY_TAG.findall(value)]


def none_match(if_none_match: str, etag: str) -> bool:
    """Whether If-None-Match matches `etag` (weak comparison, RFC 9110 §13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag == opaque for _, tag in _entity_tags(if_none_match))


def match(if_match: str, etag: str) -> bool:
    """Whether If-Match matches `etag` (strong comparison, RFC 9110 §13.1.1)."""
    if if_match.strip() == "*":
        return True
    if etag.startswith("W/"):
        return False
    return any(not weak and tag == etag for weak, tag in _entity_tags(if_match))


def not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str, last_modified: float) -> bool:
    """Whether a GET/HEAD with these validators gets 304 for a representation with `etag` and `last_modified`."""
    # RFC 9110 §13.2.2: If-Modified-Since counts only when If-None-Match is absent.
    if if_none_match is not None:
        return none_match(if_none_match, etag)
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since).timestamp()
    except (TypeError, ValueError):
        return False  # §13.1.3: an invalid date is ignored
    return last_modified <= since
