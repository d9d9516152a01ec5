"""Request paths in their normal form (RFC 3986 §6.2.2), so that spellings an origin serves alike share one cache key.

`/a/../b`, `/./b` and `/%62` all name `/b`: the cache key, the target sent to the origin and the
keys of URL and prefix purges all use the normal form, so the origin serves exactly what is keyed.
Pure string functions, no I/O.
"""

from __future__ import annotations

import re

UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")  # RFC 3986 §2.3
_PERCENT_ENCODED = re.compile(r"%([0-9A-Fa-f]{2})")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def normalise_path(path: str) -> str:
    """`path` (as sent: percent-encoded, no query) in normal form: percent-encoded unreserved characters
    decoded and other percent-encodings in upper case (§6.2.2.1-2), then dot segments removed (§6.2.2.3).

    Reserved characters (`%2F` among them) stay encoded. Cheap when there is nothing to do."""
    if "%" not in path and "/." not in path:
        return path
    if "%" in path:
        if _STRAY_PERCENT.search(path):
            # A '%' that starts no percent-encoding: decoding next to it could spell a new one
            # ('%%341' -> '%41'), so only the case of the hex digits is normalised.
            path = _PERCENT_ENCODED.sub(lambda m: "%" + m.group(1).upper(), path)
        else:
            path = _PERCENT_ENCODED.sub(_normal_octet, path)
    if "/." in path or path.startswith("."):
        path = remove_dot_segments(path)
    return path


def _normal_octet(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in UNRESERVED else "%" + match.group(1).upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4: `path` without `.` and `..` segments (`/a/b/../c/./d` -> `/a/c/d`)."""
    output: list[str] = []
    segments = path.split("/")
    absolute = path.startswith("/")
    if absolute:
        segments = segments[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")  # '/a/.' -> '/a/': the trailing slash stays
        elif segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    return ("/" if absolute else "") + "/".join(output)
