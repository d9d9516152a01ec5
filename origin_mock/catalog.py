"""The shop's products: a deterministic catalog whose items change only through `Catalog.update`.

Every product starts at version 1 with a fixed `updated_at`; an update bumps the
version and moves `updated_at` forward by at least one whole second, so both the
ETag and Last-Modified of a product change on every update.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from origin_mock.database import Database

# 2024-01-01T00:00:00Z: initial timestamps are spread over the 90 days after it.
CATALOG_EPOCH = 1_704_067_200
_SPREAD_SECONDS = 90 * 86_400

_ADJECTIVES = (
    "Classic", "Compact", "Deluxe", "Ergonomic", "Handmade", "Lightweight", "Modern", "Organic",
    "Portable", "Recycled", "Rugged", "Sleek", "Smart", "Vintage", "Waterproof", "Wireless",
)
_NOUNS = (
    "Backpack", "Blender", "Bottle", "Chair", "Desk Lamp", "Headphones", "Jacket", "Kettle",
    "Keyboard", "Mug", "Notebook", "Pan", "Speaker", "Sneakers", "Tent", "Watch", "Umbrella",
)
EDITABLE_FIELDS = frozenset({"name", "description", "price"})

_COLOURS = ("black", "white", "red", "blue", "green", "grey", "yellow", "orange", "teal")


@dataclass(frozen=True)
class Product:
    """One product at one version."""

    id: int
    name: str
    description: str
    price: float
    version: int
    updated_at: int  # epoch seconds

    @cached_property
    def etag(self) -> str:
        """Strong entity tag naming this product's version."""
        return f'"p{self.id}-v{self.version}"'

    @cached_property
    def last_modified(self) -> str:
        """`updated_at` as an HTTP date."""
        return formatdate(self.updated_at, usegmt=True)

    def as_dict(self) -> dict[str, Any]:
        """The product as the API shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "price": self.price,
            "version": self.version,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.updated_at)),
        }

    @cached_property
    def json_body(self) -> bytes:
        """The product as a JSON document, rendered once per version."""
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()


def initial_product(product_id: int) -> Product:
    """The product `product_id` as the catalog starts with it, the same in every run."""
    mix = product_id * 2_654_435_761 % 2**32  # Knuth's multiplicative hash: spreads neighbours apart
    adjective = _ADJECTIVES[mix % len(_ADJECTIVES)]
    noun = _NOUNS[(mix >> 8) % len(_NOUNS)]
    colour = _COLOURS[(mix >> 16) % len(_COLOURS)]
    article = "An" if adjective[0] in "AEIOU" else "A"
    return Product(
        id=product_id,
        name=f"{adjective} {noun} {product_id}",
        description=f"{article} {adjective.lower()} {noun.lower()} in {colour}, product number {product_id} of our shop.",
        price=round(0.99 + (mix % 50_000) / 100, 2),
        version=1,
        updated_at=CATALOG_EPOCH + mix % _SPREAD_SECONDS,
    )


class ProductNotFound(LookupError):
    """No product has this id."""


class Catalog:
    """Products 1..size over a database; a product never written reads as its initial version."""

    def __init__(self, size: int, database: Database, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self.database = database
        self._clock = clock

    async def get(self, product_id: int, as_of: float | None = None) -> Product:
        """The product as of `as_of` (None: the primary's current version); ProductNotFound outside 1..size."""
        if not 1 <= product_id <= self.size:
            raise ProductNotFound(product_id)
        found = await self.database.versions([product_id], as_of)
        return found.get(product_id) or initial_product(product_id)

    async def page(self, number: int, page_size: int, as_of: float | None = None) -> list[Product]:
        """Products of 1-based page `number` (empty past the last page)."""
        first = (number - 1) * page_size + 1
        ids = list(range(first, min(first + page_size, self.size + 1)))
        found = await self.database.versions(ids, as_of)
        return [found.get(i) or initial_product(i) for i in ids]

    def page_count(self, page_size: int) -> int:
        """How many pages of `page_size` the catalog fills."""
        return -(-self.size // page_size)

    async def update(self, product_id: int, changes: dict[str, Any]) -> Product:
        """Apply field changes (name, description, price) on the primary as a new version; returns it."""
        unknown = changes.keys() - EDITABLE_FIELDS
        if unknown:
            raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
        current = await self.get(product_id)
        if "price" in changes:
            changes = changes | {"price": round(float(changes["price"]), 2)}
        # Last-Modified has one-second resolution: two updates within a second must still differ.
        now = self._clock()
        updated_at = max(int(now), current.updated_at + 1)
        product = dataclasses.replace(current, **changes, version=current.version + 1, updated_at=updated_at)
        await self.database.commit(product, now)
        return product
