"""Prices: discounts and tax."""

from __future__ import annotations

import time

TAX_RATE = 0.2


def discount(total_cents: int, code: str | None) -> int:
    """The discount in cents for a promotion code."""
    if code == "TEA10":
        return total_cents // 10
    return 0


def with_tax(cents: int) -> int:
    time.sleep(0.002)  # pretend to ask a tax service
    return round(cents * (1 + TAX_RATE))
