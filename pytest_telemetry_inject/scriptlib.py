"""The one module an insertion script may import.

An insertion script is a list of line edits on one function's source (line numbers are
1-based and relative to the function's first line, its first decorator included):

- ``indent(first, last, unit, after, keep)``: every line from ``first`` to ``last`` gets
  ``unit`` inserted after the prefix ``after`` (at column 0 when the line does not start with
  it), except blank lines and the lines listed in ``keep`` (those that start inside a
  multi-line string: re-indenting them would change the string).
- ``insert(before, text)``: a new line ``text`` before line ``before``.
- ``insert_after(line, text, maps_to=0)``: a new line ``text`` after line ``line``; in the
  line map it stands for line ``maps_to`` (default: ``line``) — code that runs on every
  call, such as a ``finally`` clause, must not claim a line that may not have run.
- ``insert_text(line, column, text)``: ``text`` inside line ``line``, before the character
  at ``column`` of the original line (0-based; languages with braces put their telemetry
  on existing lines, so no line moves).

Edits apply in the order given and always refer to the original line numbers. The same
functions compose the edits of nested functions in a whole file (``engine.reconstruct``),
so a script applied to its function alone gives exactly that function's part of the file.

This file is stdlib-only and has no side effects: the sandbox loads it by path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "Indent",
    "Insert",
    "InsertAfter",
    "InsertText",
    "ScriptMismatch",
    "apply",
    "apply_edits",
    "indent",
    "insert",
    "insert_after",
    "insert_text",
    "is_blank",
    "indent_line",
    "line_eol",
    "split_lines",
]

_BLANK = " \t\x0c\r\n"


class ScriptMismatch(ValueError):
    """The script was made for another source than the one it was given."""


class Indent(NamedTuple):
    first: int
    last: int
    unit: str
    after: str
    keep: tuple[int, ...]


class Insert(NamedTuple):
    before: int
    text: str


class InsertAfter(NamedTuple):
    line: int
    text: str
    maps_to: int = 0


class InsertText(NamedTuple):
    line: int
    column: int
    text: str


Edit = Indent | Insert | InsertAfter | InsertText


def indent(first: int, last: int, unit: str, after: str = "", keep: Sequence[int] = ()) -> Indent:
    if first < 1 or last < first:
        raise ValueError(f"bad line range {first}..{last}")
    if not unit or unit.strip(" \t"):
        raise ValueError("the indentation unit must be spaces or tabs")
    return Indent(first, last, unit, after, tuple(keep))


def insert(before: int, text: str) -> Insert:
    if before < 1 or "\n" in text or "\r" in text:
        raise ValueError("insert takes a line number >= 1 and one line of text")
    return Insert(before, text)


def insert_after(line: int, text: str, maps_to: int = 0) -> InsertAfter:
    if line < 1 or maps_to < 0 or "\n" in text or "\r" in text:
        raise ValueError("insert_after takes a line number >= 1 and one line of text")
    return InsertAfter(line, text, maps_to)


def insert_text(line: int, column: int, text: str) -> InsertText:
    if line < 1 or column < 0 or "\n" in text or "\r" in text:
        raise ValueError("insert_text takes a line >= 1, a column >= 0 and text without line breaks")
    return InsertText(line, column, text)


def split_lines(text: str) -> list[str]:
    """Split at ``\\n`` only (as tree-sitter and Python's tokenizer count rows), keeping ends."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def is_blank(line: str) -> bool:
    return not line.strip(_BLANK)


def line_eol(lines: Sequence[str], index: int) -> str:
    """The line ending to give a line inserted at ``index`` (0-based): that line's own, else
    the one before it, else ``\\n``."""
    for i in (index, index - 1):
        if 0 <= i < len(lines):
            line = lines[i]
            if line.endswith("\r\n"):
                return "\r\n"
            if line.endswith("\n"):
                return "\n"
    return "\n"


def indent_line(line: str, unit: str, after: str) -> str:
    if after and line.startswith(after):
        return after + unit + line[len(after):]
    return unit + line


def apply_edits(lines: list[str], edits: Sequence[Edit], offset: int = 0,
                pre: list[list[str]] | None = None, post: list[list[tuple[str, int | None]]] | None = None,
                shift: list[int] | None = None, inline: dict[int, list[tuple[int, int]]] | None = None) -> None:
    """Apply ``edits`` in place. ``lines`` are the original lines (0-based; ``offset`` is
    added to the edits' 1-based numbers to find them), ``pre``/``post`` hold the lines
    inserted before/after each line so far (by other functions), ``shift`` the columns each
    line moved right, ``inline`` the (original column, length) of the text inserted inside
    each line so far. Used for one function and for a whole file alike."""
    if inline is None:
        inline = {}
    n = len(lines)
    own: dict[int, int] = {}  # lines this call inserted before line i: they go first, in order
    if pre is None:
        pre = [[] for _ in range(n)]
    if post is None:
        post = [[] for _ in range(n)]
    for edit in edits:
        if isinstance(edit, Indent):
            first, last = edit.first - 1 + offset, edit.last - 1 + offset
            if last >= n:
                raise ScriptMismatch(f"indent reaches line {edit.last}, past the end")
            keep = {k - 1 + offset for k in edit.keep}
            unit, after = edit.unit, edit.after
            with_unit, size = after + unit, len(after)
            width = len(unit)
            for i in range(first, last + 1):  # the hot loop of a cold run: kept inline
                if pre[i]:
                    pre[i] = [indent_line(t, unit, after) for t in pre[i]]
                if post[i]:
                    post[i] = [(indent_line(t, unit, after), m) for t, m in post[i]]
                line = lines[i]
                if i in keep or not line.strip(_BLANK):
                    continue
                lines[i] = with_unit + line[size:] if after and line.startswith(after) else unit + line
                if shift is not None:
                    shift[i] += width
        elif isinstance(edit, Insert):
            i = edit.before - 1 + offset
            if i >= n:
                raise ScriptMismatch(f"insert before line {edit.before}, past the end")
            slot = own.get(i, 0)
            pre[i].insert(slot, edit.text + line_eol(lines, i))
            own[i] = slot + 1
        elif isinstance(edit, InsertAfter):
            i = edit.line - 1 + offset
            if i >= n or not lines[i].endswith("\n"):
                raise ScriptMismatch(f"insert after line {edit.line}: no line ending there")
            post[i].append((edit.text + line_eol(lines, i), edit.maps_to - 1 + offset if edit.maps_to else None))
        elif isinstance(edit, InsertText):
            i = edit.line - 1 + offset
            if i >= n:
                raise ScriptMismatch(f"insert_text on line {edit.line}, past the end")
            done = inline.setdefault(i, [])
            # The column is in the original line: move it past what was inserted at or
            # before it (earlier insertions at the same column stay first).
            moved = (shift[i] if shift is not None else 0) + sum(length for column, length in done
                                                                 if column <= edit.column)
            position = edit.column + moved
            line = lines[i]
            if position > len(line.rstrip("\r\n")):
                raise ScriptMismatch(f"insert_text at column {edit.column} of line {edit.line}, past its end")
            lines[i] = line[:position] + edit.text + line[position:]
            done.append((edit.column, len(edit.text)))
        else:
            raise TypeError(f"not an edit: {edit!r}")


def join(lines: Sequence[str], pre: Sequence[Sequence[str]],
         post: Sequence[Sequence[tuple[str, int | None]]]) -> str:
    out: list[str] = []
    for i, line in enumerate(lines):
        if pre[i]:
            out.extend(pre[i])
        out.append(line)
        if post[i]:
            out.extend(text for text, _target in post[i])
    return "".join(out)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def apply(source: str, edits: Sequence[Edit], *, source_sha256: str | None = None,
          output_sha256: str | None = None) -> str:
    """Apply ``edits`` to ``source``. A source that already is the script's output comes
    back unchanged (applying twice changes nothing); any other source is refused."""
    digest = sha256(source)
    if output_sha256 is not None and digest == output_sha256:
        return source
    if source_sha256 is not None and digest != source_sha256:
        raise ScriptMismatch("this script was made for another version of the function")
    lines = split_lines(source)
    pre: list[list[str]] = [[] for _ in lines]
    post: list[list[tuple[str, int | None]]] = [[] for _ in lines]
    apply_edits(lines, edits, 0, pre, post)
    return join(lines, pre, post)
