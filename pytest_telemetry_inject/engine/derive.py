"""Turn a script's output back into edits: ``derive_edits(source, output)``.

An LLM's insertion script is judged by what it does, not by what it says: its output for
the function's source is compared with the source, and accepted only when it ADDS and
nothing else:

- whole new lines (``insert`` before an original line, ``insert_after`` the last one);
- indentation inserted into the leading whitespace of original lines (``indent``; never
  on a line that starts inside a multi-line string: re-indenting it would change the
  string; blank lines are never touched);
- text inserted inside an original line (``insert_text``), except lines that start
  inside a multi-line string, which must stay exactly as they were.

Anything else (a changed, removed or reordered character) gives None: an LLM may add
telemetry, never change the code. The edits found are checked by applying them
(``scriptlib.apply(source, edits) == output``), so a wrong derivation can only refuse, never
accept. The engine then uses them like a template's edits: composition with nested
functions, line maps, validation and the cache's ``edits`` field work unchanged.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import NamedTuple

from ..scriptlib import Edit, Indent, Insert, InsertAfter, InsertText, ScriptMismatch, apply, is_blank, split_lines
from ..trace import traced

_WS = " \t\x0c"
MAX_WORK = 4_000_000
"""Line comparisons allowed (source lines x inserted lines); beyond it the answer is refused."""


class _Match(NamedTuple):
    score: int
    indent: tuple[str, str] | None
    """(unit, after) of an indentation inserted on this line."""
    inline: tuple[tuple[int, str], ...]
    """(column in the original line, text) inserted inside it."""


@traced("validation")
def derive_edits(source: str, output: str, *, keep: Sequence[int] | None = None,
                 language: str = "python") -> list[Edit] | None:
    """The edits that turn ``source`` into ``output`` by adding only; None when there are none.

    ``keep``: 1-based lines of ``source`` that start inside a multi-line string (computed
    for Python when not given)."""
    if output == source:
        return []
    old, new = split_lines(source), split_lines(output)
    n, m = len(old), len(new)
    if m < n or (n and not old[-1].endswith("\n") and not new[-1].endswith(old[-1][-1:] or "\n")):
        return None
    extra = m - n
    if n * (extra + 1) > MAX_WORK:
        return None
    in_string = set(keep) if keep is not None else _string_lines(source, language)
    alignment = _align(old, new, in_string)
    if alignment is None:
        return None
    edits = _edits(old, new, alignment, in_string)
    try:
        if apply(source, edits) != output:
            return None
    except (ScriptMismatch, ValueError, IndexError):
        return None
    return edits


# -- matching one line ----------------------------------------------------------------------------


def _split_eol(line: str) -> tuple[str, str]:
    if line.endswith("\r\n"):
        return line[:-2], "\r\n"
    if line.endswith("\n"):
        return line[:-1], "\n"
    return line, ""


def _leading(text: str) -> str:
    return text[: len(text) - len(text.lstrip(_WS))]


def _indent_of(s_ws: str, o_ws: str) -> tuple[str, str] | None:
    """(unit, after) such that inserting ``unit`` after the prefix ``after`` of ``s_ws``
    gives ``o_ws``; the prefix is as short as possible."""
    if len(o_ws) <= len(s_ws):
        return None
    width = len(o_ws) - len(s_ws)
    for k in range(len(s_ws) + 1):
        if o_ws[:k] == s_ws[:k] and o_ws[k + width:] == s_ws[k:]:
            unit = o_ws[k:k + width]
            if unit.strip(" \t") == "":
                return unit, s_ws[:k]
    return None


def _inline(s: str, o: str, base: int = 0) -> tuple[tuple[int, str], ...] | None:
    """Text inserted into ``s`` to give ``o`` as (column, text); None if anything else changed."""
    if s == o:
        return ()
    if len(o) < len(s):
        return None
    matcher = difflib.SequenceMatcher(None, s, o, autojunk=False)
    inserts = []
    for tag, i1, _i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if tag != "insert":
            return None
        inserts.append((base + i1, o[j1:j2]))
    return tuple(inserts)


def _match(s_line: str, o_line: str, in_string: bool) -> _Match | None:
    if s_line == o_line:
        return _Match(3, None, ())
    if in_string:
        return None  # any change to a line inside a string changes the string
    s, s_eol = _split_eol(s_line)
    o, o_eol = _split_eol(o_line)
    if s_eol != o_eol:
        return None
    if not is_blank(s_line):
        s_ws, o_ws = _leading(s), _leading(o)
        if s_ws != o_ws:
            indent = _indent_of(s_ws, o_ws)
            if indent is not None:
                inline = _inline(s[len(s_ws):], o[len(o_ws):], len(s_ws))
                if inline is not None:
                    return _Match(2 if not inline else 1, indent, inline)
    inline = _inline(s, o)
    if inline is None:
        return None
    return _Match(1, None, inline)


# -- aligning the lines -----------------------------------------------------------------------------


def _align(old: list[str], new: list[str], in_string: set[int]) -> list[tuple[int, _Match]] | None:
    """For each original line (in order), the output line it became and how; the output
    lines left over are inserted lines. Dynamic programming over the number of lines
    inserted so far (0..extra), maximising the quality of the matches."""
    n, extra = len(old), len(new) - len(old)
    neg = -1
    # best[i][k]: the best score for old[i:] when old[i] may go to new[i + k] or later.
    best = [[neg] * (extra + 2) for _ in range(n + 1)]
    choice: list[list[_Match | None]] = [[None] * (extra + 1) for _ in range(n)]
    for k in range(extra + 1):
        best[n][k] = 0
    for i in range(n - 1, -1, -1):
        line_in_string = (i + 1) in in_string
        for k in range(extra, -1, -1):
            skip = best[i][k + 1] if k + 1 <= extra else neg
            take = neg
            match = _match(old[i], new[i + k], line_in_string)
            if match is not None and best[i + 1][k] != neg:
                take = match.score + best[i + 1][k]
            if take != neg and take >= skip:
                best[i][k] = take
                choice[i][k] = match
            else:
                best[i][k] = skip
    if best[0][0] == neg:
        return None
    alignment: list[tuple[int, _Match]] = []
    k = 0
    for i in range(n):
        while choice[i][k] is None or best[i][k] != best[i + 1][k] + choice[i][k].score:  # type: ignore[union-attr]
            k += 1
            if k > extra:
                return None
        alignment.append((i + k, choice[i][k]))  # type: ignore[arg-type]
    return alignment


# -- edits -------------------------------------------------------------------------------------------


def _edits(old: list[str], new: list[str], alignment: list[tuple[int, _Match]],
           in_string: set[int]) -> list[Edit]:
    n = len(old)
    inline: list[Edit] = []
    indents: list[Edit] = []
    inserts: list[Edit] = []
    # Indentation: runs of lines with the same (unit, after); blank lines and lines inside
    # strings that stayed as they were may sit inside a run (indent skips them).
    run: list[int] = []
    run_key: tuple[str, str] | None = None

    def close_run() -> None:
        if run and run_key is not None:
            first, last = run[0], run[-1]
            keep = [line for line in range(first, last + 1) if line in in_string]
            indents.append(Indent(first, last, run_key[0], run_key[1], tuple(keep)))

    for i, (_j, match) in enumerate(alignment):
        line = i + 1
        for column, text in match.inline:
            inline.append(InsertText(line, column, text))
        if match.indent is not None:
            if run_key == match.indent:
                run.append(line)
            else:
                close_run()
                run, run_key = [line], match.indent
        elif match.score == 3 and (is_blank(old[i]) or line in in_string):
            continue  # indent leaves these alone: the run may go on past them
        else:
            close_run()
            run, run_key = [], None
    close_run()
    # Inserted lines: before the original line that follows them, or after the last one.
    previous = -1
    for i, (j, _match) in enumerate(alignment):
        for inserted in range(previous + 1, j):
            inserts.append(Insert(i + 1, _split_eol(new[inserted])[0]))
        previous = j
    for inserted in range(previous + 1, len(new)):
        inserts.append(InsertAfter(n, _split_eol(new[inserted])[0]))
    # Text inside lines first (its columns are those of the original line), then the
    # indentation, then whole lines (an indent before them would indent them too).
    return inline + indents + inserts


def _string_lines(source: str, language: str) -> set[int]:
    """1-based lines of ``source`` that start inside a multi-line string (Python only)."""
    if language != "python" or ('"""' not in source and "'''" not in source and "\\\n" not in source):
        return set()
    from ..languages.python import _string_rows, _ts

    wrapped = source[:1] in _WS
    text = "if 1:\n" + source if wrapped else source
    data = text.encode("utf-8", "surrogatepass")
    rows = _string_rows(_ts().parser.parse(data).root_node, data)
    return {row + (0 if wrapped else 1) for row in rows if row + (0 if wrapped else 1) >= 1}
