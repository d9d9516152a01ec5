"""`cdn purge`: the purge API's command-line client."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx

KINDS = ("url", "prefix", "tag", "event", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="what to purge")
    parser.add_argument("values", nargs="*",
                        help="URLs, prefixes or tags; for an event: its name then FIELD=VALUE pairs")
    parser.add_argument("--soft", action="store_true", help="mark stale instead of deleting")
    parser.add_argument("--wait", nargs="?", type=float, const=10.0, default=None, metavar="SECONDS",
                        help="wait until every live edge applied it (default 10 s); exit 1 if some did not")
    parser.add_argument("--version", dest="fence", type=int, default=None, metavar="N",
                        help="version fence: edges refuse to store anything older than N for what this purges")
    parser.add_argument("--api", default=os.environ.get("CDN_PURGE_API", "http://127.0.0.1:8090"),
                        help="purge API base URL (env CDN_PURGE_API)")
    parser.add_argument("--token", default=os.environ.get("CDN_PURGE_TOKEN"), help="bearer token (env CDN_PURGE_TOKEN)")
    parser.add_argument("--idempotency-key", default=None, help="make a retried call return the first call's purge")


def build_payload(kind: str, values: list[str], soft: bool, fence: int | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"kind": kind, "soft": soft}
    if fence is not None:
        payload["version"] = fence
    if kind == "event":
        if not values:
            raise ValueError("an event purge needs the event name")
        fields: dict[str, Any] = {}
        for pair in values[1:]:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise ValueError(f"event fields are FIELD=VALUE, not {pair!r}")
            fields[name] = int(value) if value.isdigit() else value
        payload.update(event=values[0], fields=fields)
    elif kind != "all":
        if not values:
            raise ValueError(f"a {kind} purge needs at least one value")
        payload["values"] = values
    return payload


def describe(answer: dict[str, Any]) -> list[str]:
    lines = [f"purge {answer['id']} logged at {answer.get('position')}" + (" (replayed)" if answer.get("replayed") else "")]
    for edge, applied in sorted(answer.get("applied", {}).items()):
        when = f"after {applied['after_ms']} ms" if applied.get("after_ms") is not None else applied.get("note", "")
        lines.append(f"  {edge:<16} {applied.get('region') or '':<12} applied {when}")
    for edge in answer.get("pending", []):
        lines.append(f"  {edge:<16} {'':<12} PENDING")
    if "complete" in answer:
        lines.append("complete: every live edge applied it" if answer["complete"] else "not complete: some live edges are pending")
    return lines


def run(args: argparse.Namespace) -> int:
    if not args.token:
        print("cdn purge: a token is needed (--token or CDN_PURGE_TOKEN)", file=sys.stderr)
        return 2
    try:
        payload = build_payload(args.kind, args.values, args.soft, args.fence)
    except ValueError as exc:
        print(f"cdn purge: {exc}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {args.token}"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    params = {"wait": str(args.wait)} if args.wait is not None else {}
    timeout = (args.wait or 0) + 10
    try:
        response = httpx.post(args.api.rstrip("/") + "/purges", json=payload, headers=headers, params=params, timeout=timeout)
    except httpx.HTTPError as exc:
        print(f"cdn purge: cannot reach the purge API at {args.api}: {exc}", file=sys.stderr)
        return 2
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text}
    if response.status_code >= 400:
        print(f"cdn purge: {response.status_code}: {answer.get('error', answer)}", file=sys.stderr)
        return 2
    print("\n".join(describe(answer)))
    if args.wait is not None and not answer.get("complete"):
        return 1
    return 0
