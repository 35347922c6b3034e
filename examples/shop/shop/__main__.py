"""Serve a few customers: `python -m shop`."""

from __future__ import annotations

from .cart import Cart
from .catalog import search
from .inventory import Inventory, OutOfStock


def serve(inventory: Inventory, orders: list[tuple[str, int]], code: str | None = None) -> int | None:
    cart = Cart(inventory)
    try:
        for sku, quantity in orders:
            cart.add(sku, quantity)
    except OutOfStock as exc:
        print(f"sorry: {exc}")
        return None
    return cart.total(code)


def main() -> None:
    inventory = Inventory({"tea": 10, "mug": 3, "pot": 1})
    print("teapots:", [p.name for p in search("teapot")])
    print("order 1:", serve(inventory, [("tea", 2), ("mug", 1)], code="TEA10"))
    print("order 2:", serve(inventory, [("pot", 1)]))
    print("order 3:", serve(inventory, [("pot", 1)]))


if __name__ == "__main__":
    main()
