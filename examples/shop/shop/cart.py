"""A shopping cart."""

from __future__ import annotations

from . import catalog, pricing
from .inventory import Inventory


class Cart:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.lines: dict[str, int] = {}

    def add(self, sku: str, quantity: int = 1) -> None:
        catalog.find(sku)
        self.inventory.reserve(sku, quantity)
        self.lines[sku] = self.lines.get(sku, 0) + quantity

    def subtotal(self) -> int:
        return sum(catalog.find(sku).price_cents * n for sku, n in self.lines.items())

    def total(self, code: str | None = None) -> int:
        subtotal = self.subtotal()
        return pricing.with_tax(subtotal - pricing.discount(subtotal, code))
