"""The origin's half of "call the purge API when content changes": an event purge per product change."""

from __future__ import annotations

import logging

import httpx

from origin_mock.catalog import Product

log = logging.getLogger("cdn.origin.purges")


class PurgeNotifier:
    """Sends `product.updated` event purges, fenced by the product's new version (unless told not to); a no-op when unconfigured."""

    def __init__(self, api: str | None, token: str | None, fence: bool = True, timeout: float = 5.0) -> None:
        self.api = api.rstrip("/") if api else None
        self.fence = fence
        self.client = httpx.AsyncClient(timeout=timeout, headers={"Authorization": f"Bearer {token}"}) if api else None
        self.sent = 0
        self.failed = 0

    async def product_changed(self, product: Product) -> dict[str, str]:
        """Log the purge before the change is acknowledged; the headers say which purge, or why none."""
        if self.client is None:
            return {}
        payload: dict[str, object] = {"kind": "event", "event": "product.updated", "fields": {"id": product.id}}
        if self.fence:
            payload["version"] = product.version
        try:
            response = await self.client.post(f"{self.api}/purges", json=payload)
            response.raise_for_status()
            self.sent += 1
            return {"x-purge-id": response.json()["id"]}
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            self.failed += 1
            log.warning("purge for product %s failed: %s", product.id, exc)
            return {"x-purge-error": exc.__class__.__name__}

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
