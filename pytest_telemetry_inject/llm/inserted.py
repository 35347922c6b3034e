"""What the checks of a model's lines share: where an inserted line is, and how a refusal
quotes it (``telemetry_check`` for Python, ``telemetry_check_brace`` for the braced
languages)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InsertedRow:
    output: int
    """0-based row of the inserted line in the output."""
    before: int
    """0-based row of the original line that follows it (the number of original lines when none does)."""


def snippet(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
