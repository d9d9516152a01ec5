"""Shopping carts keyed by session: the personalised, never-cacheable part of the shop."""

from __future__ import annotations

import secrets
from typing import Any

from cachetools import LRUCache

MAX_SESSIONS = 10_000


class Carts:
    """In-memory carts of the most recent sessions (older ones are forgotten, like expired sessions)."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._carts: LRUCache[str, dict[int, int]] = LRUCache(maxsize=max_sessions)

    def session(self, cookie: str | None) -> str:
        """The session for a cookie value, opening a new one when it is missing or forgotten."""
        if cookie is not None and cookie in self._carts:
            return cookie
        session = secrets.token_urlsafe(16)
        self._carts[session] = {}
        return session

    def add(self, session: str, product_id: int, quantity: int) -> None:
        """Put `quantity` more of a product in the session's cart."""
        cart = self._carts[session]
        cart[product_id] = cart.get(product_id, 0) + quantity

    def view(self, session: str) -> dict[str, Any]:
        """The cart as the API shows it."""
        cart = self._carts[session]
        return {
            "items": [{"product_id": p, "quantity": q} for p, q in sorted(cart.items())],
            "count": sum(cart.values()),
        }
