"""Stock levels, and reservations against them."""

from __future__ import annotations


class OutOfStock(Exception):
    """Fewer items are left than were asked for."""


class Inventory:
    def __init__(self, levels: dict[str, int]) -> None:
        self.levels = dict(levels)

    def available(self, sku: str) -> int:
        return self.levels.get(sku, 0)

    def reserve(self, sku: str, quantity: int) -> None:
        left = self.available(sku)
        if quantity > left:
            raise OutOfStock(f"{sku}: {quantity} asked, {left} left")
        self.levels[sku] = left - quantity
