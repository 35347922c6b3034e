"""The products a shop sells."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price_cents: int


CATALOG = {
    "tea": Product("tea", "Green tea", 450),
    "mug": Product("mug", "Stoneware mug", 1200),
    "pot": Product("pot", "Cast-iron teapot", 4800),
}


def find(sku: str) -> Product:
    """The product with this SKU; KeyError when the shop has none."""
    try:
        return CATALOG[sku]
    except KeyError:
        raise KeyError(f"no product {sku!r}") from None


def search(words: str):
    """Products whose name contains every word, cheapest first."""
    wanted = words.lower().split()
    for product in sorted(CATALOG.values(), key=lambda p: p.price_cents):
        if all(word in product.name.lower() for word in wanted):
            yield product
