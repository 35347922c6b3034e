"""Splice instrumented functions back into their file and map new lines to original ones.

Each function's edits refer to its own original lines; composing them innermost first
(``scriptlib.apply_edits`` keeps the lines other functions inserted) gives the same text
for a function as its script gives alone, indented by whatever encloses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..languages.base import FunctionRecord
from ..scriptlib import Edit, apply_edits, join, line_eol


@dataclass(frozen=True)
class LineMap:
    """For each line of the new text (index = new line - 1): the original line it comes
    from (inserted lines map to the line they were inserted at) and how many columns its
    code moved right."""

    original: tuple[int, ...]
    shift: tuple[int, ...]

    def to_segments(self) -> list[list[int]]:
        """Compact form: [new_start, original_start, count, shift] runs (JSON-friendly)."""
        segments: list[list[int]] = []
        for index, (orig, shift) in enumerate(zip(self.original, self.shift)):
            if segments:
                last = segments[-1]
                if last[1] + last[2] == orig and last[3] == shift:
                    last[2] += 1
                    continue
            segments.append([index + 1, orig, 1, shift])
        return segments

    @classmethod
    def from_segments(cls, segments: Sequence[Sequence[int]]) -> LineMap:
        original: list[int] = []
        shift: list[int] = []
        for _new, orig, count, moved in segments:
            original.extend(range(orig, orig + count))
            shift.extend([moved] * count)
        return cls(tuple(original), tuple(shift))

    @classmethod
    def identity(cls, count: int) -> LineMap:
        return cls(tuple(range(1, count + 1)), (0,) * count)


@dataclass(frozen=True)
class Reconstruction:
    text: str
    line_map: LineMap
    new_rows: tuple[int, ...]
    """The 0-based row of the new text that each original row (by index) became."""


def reconstruct(lines: Sequence[str], functions: Sequence[tuple[FunctionRecord, Sequence[Edit]]],
                header: Sequence[str | Edit] = (), header_line: int = 0) -> Reconstruction:
    """The file with every function's edits applied and the module header added: its lines
    (strings) inserted before ``header_line`` (1-based), or its edits (file line numbers:
    languages that must not move a line put their import inside an existing one)."""
    work = list(lines)
    count = len(work)
    pre: list[list[str]] = [[] for _ in range(count)]
    post: list[list[tuple[str, int | None]]] = [[] for _ in range(count)]
    shift = [0] * count
    inline: dict[int, list[tuple[int, int]]] = {}
    for record, edits in sorted(functions, key=lambda item: item[0].start_line, reverse=True):
        apply_edits(work, edits, record.start_line - 1, pre, post, shift, inline)
    header_lines = [entry for entry in header if isinstance(entry, str)]
    header_edits = [entry for entry in header if not isinstance(entry, str)]
    if header_edits:
        apply_edits(work, header_edits, 0, pre, post, shift, inline)
    if header_lines:
        if not 1 <= header_line <= count:
            raise ValueError("no place for the module header")
        index = header_line - 1
        eol = line_eol(work, index)
        pre[index][0:0] = [line + eol for line in header_lines]
    original: list[int] = []
    moved: list[int] = []
    new_rows: list[int] = []
    for index in range(count):
        number = index + 1
        if pre[index]:
            original.extend([number] * len(pre[index]))
            moved.extend([0] * len(pre[index]))
        new_rows.append(len(original))
        original.append(number)
        moved.append(shift[index])
        for _text, target in post[index]:
            original.append(number if target is None else target + 1)
            moved.append(0)
    return Reconstruction(join(work, pre, post), LineMap(tuple(original), tuple(moved)), tuple(new_rows))
