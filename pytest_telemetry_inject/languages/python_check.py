"""Is this cached output the original plus this tool's telemetry, and nothing else?

A file memo read from a cache this machine did not seal (engine/seal.py) is checked here
against the original before anything uses it. The check reads text (it parses only the
few lines between a ``def`` and its wrapper when they are not plainly a signature and a
docstring), walking the output and the original side by side:

- an output line is an original line, unchanged or with the indentation unit of each
  wrapped body around it inserted after that body's indentation (blank lines and lines that
  start inside a multi-line string are never changed), or one of the lines the templates
  insert for the memo's target;
- the inserted lines are the module header (exactly once, before the first statement
  after the docstring and the ``__future__`` imports); a decorator directly above a
  ``def``; a ``with`` line, or a try form's two prologue lines, directly above a body's
  first statement after its docstring, and the try form's epilogue after its last one.
  Each names the qualname that the memo's function list gives for that ``def``, whose line
  defines a function of that name;
- a wrapped body ends where the original's body ends: its last line closes every bracket
  and string (strings and comments masked and brackets counted; a small lexer where the body
  holds multi-line strings or backslash continuations), and the next line of code is
  indented less than the body.

The verdict is ``ok`` (with the line map the output must have), ``corrupt`` (the memo is
not this tool's output for this original) or ``unsure`` (a shape the text alone does not
settle, such as an original that carries telemetry already: the file is then rebuilt, and
the memo counts as corrupt only if the rebuilt output differs from it).

The qualname's enclosing part (``Outer.<locals>.`` in ``Outer.<locals>.f``) is taken from
the function list: a memo that lies about it mislabels a span, and can do nothing else.
"""

from __future__ import annotations

import ast
import bisect
import itertools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from ..scriptlib import split_lines
from .base import OutputVerdict as Verdict

if TYPE_CHECKING:
    from .python import PythonLanguage

OK: Final = "ok"
CORRUPT: Final = "corrupt"
UNSURE: Final = "unsure"

_WS = " \t\x0c"
_NAME = r'"([A-Za-z_][\w.<>]*)"'
"""A qualname as the templates write it: identifiers and ``<locals>`` joined by dots."""
# The otel templates' code attributes (languages/python.py OTEL_ATTRIBUTES), naming the same
# function as the span, or none (the form before them).
_OTEL_ATTRS = r'(?:, attributes=\{"code\.function\.name": __name__ \+ "\.\1", "code\.file\.path": __file__\})?'
_WITH = {
    "runtime": re.compile(r"with _telemetry\.(?:span|generator_span)\(" + _NAME + r"\):"),
    "otel": re.compile(r"with _telemetry\.(?:start_as_current_span|start_span)\(" + _NAME + _OTEL_ATTRS + r"\):"),
}
_DECORATOR = {
    "runtime": re.compile(r"@_telemetry\.instrument\(" + _NAME + r"\)"),
    "otel": re.compile(r"@_telemetry\.start_as_current_span\(" + _NAME + _OTEL_ATTRS + r"\)"),
}
_TRY_PROLOGUE = {
    "runtime": re.compile(r"_telemetry_t = _telemetry\.(?:start|start_generator)\(\)"),
    "logging": re.compile(r"_telemetry_t0 = _telemetry_clock\(\)"),
}
_DEF = re.compile(r"[ \t]*(?:async[ \t]+)?def[ \t]+([A-Za-z_]\w*)")
_DEF_OR_CLASS = re.compile(r"(?m)^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]")
_HINT = re.compile(r"\"\"\"|'''|\\\r?\n")
"""Where a string can span lines, or a line continue the one above: a triple quote, a
backslash at the end of a line."""
_BLANK = _WS + "\r\n"
# Single-line strings and comments, masked before brackets are counted (only on text
# without triple quotes or backslash continuations, where no string spans lines).
_MASK = re.compile(r"""#[^\n]*|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'""")
_DOCSTRING = re.compile(r"""[ \t]*[rRuU]?(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|"""
                        r'''"""(?:[^"\\]|\\.|"(?!""))*"""|'''
                        r"""'''(?:[^'\\]|\\.|'(?!''))*''')[ \t]*\r?\n""", re.S)
_QUOTE = re.compile(r"""#|\"\"\"|'''|"|'""")
_STRING_END = {
    '"""': re.compile(r'(?:[^"\\]|\\.|"(?!""))*"""', re.S),
    "'''": re.compile(r"(?:[^'\\]|\\.|'(?!''))*'''", re.S),
    '"': re.compile(r'(?:[^"\\\n]|\\(?:\r\n|.))*"', re.S),
    "'": re.compile(r"(?:[^'\\\n]|\\(?:\r\n|.))*'", re.S),
}


@dataclass
class _Block:
    kind: str
    """``with``, or ``try`` (the try style and the logging target's form)."""
    after: str
    """The body's indentation in the original: the unit goes in after it."""
    unit: str
    name: str
    anchor: int
    """Row (0-based) of the body's first statement after the docstring."""
    epilogue: tuple[tuple[int, str], ...] = ()


class _Corrupt(Exception):
    pass


class _Unsure(Exception):
    pass


def _ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(_WS))]


def _content(line: str) -> str:
    return line.strip(_WS + "\r\n")


def _eol(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n" if line.endswith("\n") else ""


def _blank(line: str) -> bool:
    return not line.strip(_WS + "\r\n")


def _indent(line: str, blocks: Sequence[_Block]) -> str:
    """``line`` as the wrapped bodies around it indent it (innermost first, as composed)."""
    if len(blocks) == 0 or _blank(line):
        return line
    for block in reversed(blocks):
        after = block.after
        line = after + block.unit + line[len(after):] if line.startswith(after) else block.unit + line
    return line


def _balanced(text: str) -> bool:
    return text.count("(") == text.count(")") and text.count("[") == text.count("]") \
        and text.count("{") == text.count("}")


def header_lines(target: str, import_name: str) -> list[str]:
    """The module header the templates write for ``target`` in a file that has none."""
    from types import SimpleNamespace

    from . import get_language

    none_yet = SimpleNamespace(header_present=None)
    # Stand-ins for a ParsedFile and Settings: header reads only header_present and target.
    return get_language("python").header(none_yet, SimpleNamespace(target=target), import_name)  # type: ignore[arg-type]


def _epilogue(target: str, name: str) -> tuple[tuple[int, str], ...]:
    """The lines the templates end a wrapped body with for ``target`` (the logging form's, or
    the try style's), taken from the Python language through the registry, as
    ``header_lines`` takes the header: this module never imports the language's."""
    from . import get_language

    return tuple(cast("PythonLanguage", get_language("python")).epilogue(target, name))


class _Lexer:
    """Which rows start inside a string or continue a logical line, lexed on demand from a
    row where a statement starts (used only where a body has multi-line strings or
    backslash continuations). Strings and comments are found first (the only tokens that
    decide where the others are); brackets are counted between them, only when asked."""

    def __init__(self, lines: Sequence[str], first_row: int) -> None:
        self.lines = lines
        self.text = "".join(lines[first_row:])
        self.first = first_row
        self.offsets = [0, *itertools.accumulate(len(line) for line in lines[first_row:])]
        self.position = 0
        self.row = first_row
        """The row of ``position``: strings and comments before it are known."""
        self.inside: set[int] = set()
        """Rows that start inside a string."""
        self.spans: list[tuple[int, int]] = []
        """Strings and comments found so far (start, end), in order."""
        self.depth = 0
        self.depth_at = 0
        """Bracket depth outside strings and comments at offset ``depth_at``."""
        self.span_index = 0

    def upto(self, row: int) -> None:
        """Find every string and comment that starts before ``row``."""
        text = self.text
        while self.row < row:
            match = _QUOTE.search(text, self.position)
            if match is None:
                self.row = len(self.lines)
                self.position = len(text)
                return
            start = match.start()
            token_row = self.row + text.count("\n", self.position, start)
            if token_row >= row:
                return
            token = match.group()
            if token == "#":
                end = text.find("\n", start)
                end = len(text) if end < 0 else end
            else:
                found = _STRING_END[token].match(text, match.end())
                if found is None:
                    raise _Unsure("a string that does not end")
                end = found.end()
                lines = text.count("\n", start, end)
                self.inside.update(range(token_row + 1, token_row + lines + 1))
                token_row += lines
            self.spans.append((start, end))
            self.position, self.row = end, token_row

    def in_string(self, row: int) -> bool:
        self.upto(row + 1)
        return row in self.inside

    def starts_statement(self, row: int) -> bool:
        """Whether ``row`` begins a logical line: not inside a string, not after a
        backslash at the end of a line of code, not inside brackets."""
        if row >= len(self.lines):
            return True
        if self.in_string(row):
            return False
        offset = self.offsets[row - self.first]
        before = self.lines[row - 1].rstrip("\r\n") if row > self.first else ""
        if before.endswith("\\") and not self._in_span(offset - 1 - (len(self.lines[row - 1]) - len(before))):
            return False
        return self._depth(offset) == 0

    def _in_span(self, offset: int) -> bool:
        return any(start <= offset < end for start, end in self.spans)

    def _depth(self, offset: int) -> int:
        """Bracket depth outside strings and comments at ``offset`` (asked in increasing order)."""
        if offset < self.depth_at:
            self.depth, self.depth_at, self.span_index = 0, 0, 0
        text, spans = self.text, self.spans
        at = self.depth_at
        while at < offset:
            while self.span_index < len(spans) and spans[self.span_index][1] <= at:
                self.span_index += 1
            start, end = spans[self.span_index] if self.span_index < len(spans) else (len(text), len(text))
            stop = min(start, offset)
            if at < stop:
                piece = text[at:stop]
                self.depth += sum(piece.count(c) for c in "([{") - sum(piece.count(c) for c in ")]}")
            at = max(stop, min(end, offset)) if start < offset else offset
        self.depth_at = offset
        if self.depth < 0:
            raise _Unsure("a closing bracket without its opening")
        return self.depth


class PythonOutputCheck:
    """One memo's output checked against its original (see the module docstring)."""

    def __init__(self, original: str, output: str, *, target: str, import_name: str,
                 functions: Sequence[tuple[str, int]]) -> None:
        self.old = split_lines(original)
        self.new = split_lines(output)
        self.original_text = original
        self.target = "runtime" if target == "vendored" else target
        self.header = header_lines(target, import_name)
        self.by_row: dict[int, str] = {}
        for qualname, line in functions:
            if line - 1 in self.by_row:
                raise ValueError("two functions on one line")
            self.by_row[line - 1] = qualname
        self.def_rows = sorted(self.by_row)
        self.used: set[int] = set()
        self.blocks: list[_Block] = []
        self.original: list[int] = []
        self.shift: list[int] = []
        self.lexer: _Lexer | None = None
        self.header_done = False
        self.inserted = [k for k, line in enumerate(self.new) if "_telemetry" in line]
        self.hint_rows = _hint_rows(original)

    def run(self) -> Verdict:
        if "_telemetry" in self.original_text:
            return Verdict(UNSURE, "the original carries telemetry already")
        try:
            self._walk()
        except _Corrupt as exc:
            return Verdict(CORRUPT, str(exc))
        except _Unsure as exc:
            return Verdict(UNSURE, str(exc))
        if self.used and not self.header_done:
            return Verdict(CORRUPT, "the output uses the tracer but has no module header")
        missing = sorted(set(self.by_row) - self.used)
        if missing:
            row = missing[0]
            return Verdict(CORRUPT, f"the function list says {self.by_row[row]!r} (line {row + 1}) is "
                                    "instrumented, but its telemetry is not there")
        return Verdict(OK, original=tuple(self.original), shift=tuple(self.shift))

    # -- the walk ---------------------------------------------------------------------------

    def _walk(self) -> None:
        new, old = self.new, self.old
        i = j = 0
        while True:
            i, j = self._run(i, j)
            i = self._epilogues(i, j)
            k = i
            while k < len(new) and "_telemetry" in new[k]:
                k += 2 if self._prologue_at(k) else 1
            if j == len(old):
                if k > i or i < len(new):
                    raise _Corrupt(f"output line {i + 1} has no original line")
                for block in reversed(self.blocks):
                    if block.kind != "with":
                        raise _Corrupt(f"the try form of {block.name!r} has no epilogue")
                    self._check_end(block, j)
                return
            if k >= len(new):
                raise _Corrupt(f"original line {j + 1} is missing from the output")
            line, row = new[k], old[j]
            if not _blank(row):
                self._settle(line, j)
            if k > i:
                self._pre_lines(i, k, j)
            if line != _indent(row, self.blocks) and not (line == row and self.blocks and self._in_string(j)):
                raise _Corrupt(f"output line {k + 1} is not original line {j + 1} (indented or not)")
            if line != row:
                if self._in_string(j):
                    raise _Corrupt(f"original line {j + 1} is inside a string, yet indented")
                self._outdented(row, j)
            self.original.append(j + 1)
            self.shift.append(len(line) - len(row))
            i, j = k + 1, j + 1

    def _run(self, i: int, j: int) -> tuple[int, int]:
        """Take the original lines up to the next inserted one at once, as long as they are
        what the open bodies make of them (the walk's fast path: most lines are)."""
        new, old = self.new, self.old
        nxt = bisect.bisect_left(self.inserted, i)
        stop = self.inserted[nxt] if nxt < len(self.inserted) else len(new)
        count = min(stop - i, len(old) - j)
        if count <= 0:
            return i, j
        rows = old[j:j + count]
        blocks = self.blocks
        if not blocks:
            expected = rows
        elif len(blocks) == 1:
            block = blocks[0]
            after, unit, size = block.after, block.unit, len(block.after)
            with_unit = after + unit
            expected = [row if not row.strip(_BLANK) else with_unit + row[size:] if row.startswith(after)
                        else unit + row for row in rows]
        else:
            expected = [_indent(row, blocks) for row in rows]
        got = new[i:i + count]
        if got != expected:
            count = next(x for x in range(count) if got[x] != expected[x])
            rows, got = rows[:count], got[:count]
        if blocks:
            after = blocks[-1].after
            for x, row in enumerate(rows):
                if not row.startswith(after) and row.strip(_BLANK):
                    self._outdented(row, j + x)
            if self._hinted(blocks[0].anchor, j + count):
                # A line inside a multi-line string is never indented: that would change the string.
                lexer = self._lexer()
                lexer.upto(j + count)
                for x in range(count):
                    if j + x in lexer.inside and got[x] != rows[x]:
                        raise _Corrupt(f"original line {j + x + 1} is inside a string, yet indented")
            self.shift.extend([len(a) - len(b) for a, b in zip(got, rows)])
        else:
            self.shift.extend([0] * count)
        self.original.extend(range(j + 1, j + count + 1))
        return i + count, j + count

    def _outdented(self, row: str, j: int) -> None:
        """A line of a wrapped body indented less than the body: only a comment or the
        continuation of a statement may be (a statement there would be code from outside
        the function pulled into it)."""
        if not self.blocks or row.startswith(self.blocks[-1].after) or not row.strip(_BLANK) \
                or row.lstrip(_WS).startswith("#"):
            return
        if self._lexer().starts_statement(j):
            raise _Corrupt(f"original line {j + 1} is outside the body of {self.blocks[-1].name!r} "
                           "but inside its wrapper")

    def _prologue_at(self, k: int) -> bool:
        prologue = _TRY_PROLOGUE.get(self.target)
        return prologue is not None and k + 1 < len(self.new) and \
            prologue.fullmatch(_content(self.new[k])) is not None and _content(self.new[k + 1]) == "try:"

    def _in_string(self, j: int) -> bool:
        if not self._hinted(self.blocks[0].anchor, j):
            return False  # no multi-line string or continuation since the body began
        return self._lexer().in_string(j)

    def _hinted(self, first: int, last: int) -> bool:
        """Whether rows first..last-1 hold a triple quote or a backslash continuation."""
        index = bisect.bisect_left(self.hint_rows, first)
        return index < len(self.hint_rows) and self.hint_rows[index] < last

    def _lexer(self) -> _Lexer:
        # One lexer per file, from its first line (where code certainly starts: a lexer
        # started at a place the memo names would trust the memo), made on first need and
        # lexing only as far as it is asked.
        if self.lexer is None:
            self.lexer = _Lexer(self.old, 0)
        return self.lexer

    # -- which wrapped bodies row j is in -----------------------------------------------------------

    def _settle(self, line: str, j: int) -> None:
        """End the ``with`` bodies that row j is past, as the output's line for it shows."""
        row = self.old[j]
        blocks = self.blocks
        if not blocks or line == _indent(row, blocks):
            return
        if line == row and self._in_string(j):
            return  # a line of a multi-line string: the bodies go on
        for depth in range(len(blocks) - 1, -1, -1):
            if line == _indent(row, blocks[:depth]):
                for block in reversed(blocks[depth:]):
                    if block.kind != "with":
                        raise _Corrupt(f"original line {j + 1} is past the try body of {block.name!r} "
                                       "before its epilogue")
                    self._check_end(block, j)
                del blocks[depth:]
                return

    def _check_end(self, block: _Block, j: int) -> None:
        """A wrapped body ends before row j: its last line closes every bracket and string,
        and the next line of code is indented less than the body."""
        last = j - 1
        while last > block.anchor and _blank(self.old[last]):
            last -= 1
        if self._hinted(block.anchor, last + 1):
            closed = j >= len(self.old) or self._lexer().starts_statement(j)
            if not closed:
                raise _Corrupt(f"the body of {block.name!r} is cut inside a statement")
        elif not _balanced(_MASK.sub("", "".join(self.old[block.anchor:last + 1]))):
            raise _Unsure(f"the body of {block.name!r} seems to end inside brackets")
        row = j
        while row < len(self.old) and (_blank(self.old[row]) or _content(self.old[row]).startswith("#")):
            row += 1
        if row < len(self.old):
            ws = _ws(self.old[row])
            if not (len(ws) < len(block.after) and block.after.startswith(ws)):
                raise _Corrupt(f"line {row + 1} belongs to the body of {block.name!r} but is outside its wrapper")

    # -- inserted lines ---------------------------------------------------------------------------

    def _epilogues(self, i: int, j: int) -> int:
        """Take the epilogues of the try bodies that end after row j - 1."""
        while self.blocks and self.blocks[-1].kind == "try" and j:
            block = self.blocks[-1]
            outer = self.blocks[:-1]
            eol = _eol(self.old[j - 1])
            level, text = block.epilogue[0]
            if i >= len(self.new) or self.new[i] != _indent(block.after + block.unit * level + text, outer) + eol:
                break
            lines = [_indent(block.after + block.unit * level + text, outer) + eol for level, text in block.epilogue]
            if self.new[i:i + len(lines)] != lines:
                raise _Corrupt(f"the try form's epilogue of {block.name!r} is not what this tool writes")
            self._check_end(block, j)
            self.original.extend([block.anchor + 1] * len(lines))  # it runs on every call
            self.shift.extend([0] * len(lines))
            i += len(lines)
            self.blocks.pop()
        return i

    def _pre_lines(self, start: int, end: int, j: int) -> None:
        """The lines inserted above row j: each is checked with the bodies open at that point
        (a wrapper opened above row j indents the decorator of a function defined there)."""
        row = self.old[j]
        eol = _eol(row) or (_eol(self.old[j - 1]) if j else "") or "\n"
        ws = _ws(row)
        k = start
        if not self.header_done and _content(self.new[k]) == self.header[0]:
            expected = [line + eol for line in self.header]
            if self.blocks or self.new[k:k + len(expected)] != expected:
                raise _Corrupt("the module header is not what this tool writes")
            self._check_header_place(j)
            k += len(expected)
            self.header_done = True
        while k < end:
            line = self.new[k]
            content = _content(line)
            if line != _indent(ws + content, self.blocks) + eol:
                raise _Corrupt(f"output line {k + 1} is an inserted line at the wrong indentation")
            decorator, with_form = _DECORATOR.get(self.target), _WITH.get(self.target)
            match = decorator.fullmatch(content) if decorator else None
            if match:
                self._claim(match.group(1), j, decorator=True)
                k += 1
                continue
            match = with_form.fullmatch(content) if with_form else None
            if match:
                self._open("with", match.group(1), j)
                k += 1
                continue
            if self._prologue_at(k) and k + 1 < end:
                if self.new[k + 1] != _indent(ws + "try:", self.blocks) + eol:
                    raise _Corrupt(f"output line {k + 2} is not the try form's second line")
                self._open("try", None, j)
                k += 2
                continue
            raise _Corrupt(f"an inserted line is not telemetry of this target: {content[:80]!r}")
        self.original.extend([j + 1] * (end - start))
        self.shift.extend([0] * (end - start))

    def _open(self, kind: str, name: str | None, j: int) -> None:
        """A wrapper above row j, which must be the first statement after a docstring."""
        index = _bisect_before(self.def_rows, j)
        if index < 0:
            raise _Corrupt(f"a wrapper above line {j + 1} is in no function of the memo's list")
        def_row = self.def_rows[index]
        qualname = self.by_row[def_row]
        if name is not None and name != qualname:
            raise _Corrupt(f"the span above line {j + 1} is named {name!r}, not {qualname!r}")
        self._claim(qualname, def_row, decorator=False)
        after, def_ws = _ws(self.old[j]), _ws(self.old[def_row])
        if not after.startswith(def_ws) or len(after) <= len(def_ws):
            raise _Corrupt(f"the wrapper of {qualname!r} is not indented under its def")
        self._check_prelude(def_row, j, qualname)
        epilogue: tuple[tuple[int, str], ...] = ()
        if kind == "try":
            epilogue = _epilogue(self.target, qualname)
        self.blocks.append(_Block(kind, after, after[len(def_ws):], qualname, j, epilogue))

    def _claim(self, name: str, def_row: int, *, decorator: bool) -> None:
        if self.by_row.get(def_row) != name:
            raise _Corrupt(f"the telemetry of {name!r} is not at that function's def in the memo's list")
        match = _DEF.match(self.old[def_row])
        if match is None or match.group(1) != name.rpartition(".")[2]:
            raise _Corrupt(f"line {def_row + 1} does not define {name!r}")
        if self._hinted(0, def_row) and not self._lexer().starts_statement(def_row):
            raise _Corrupt(f"line {def_row + 1} looks like the def of {name!r} but is inside a string or statement")
        if def_row in self.used:
            raise _Corrupt(f"{name!r} has telemetry twice")
        self.used.add(def_row)

    def _check_prelude(self, def_row: int, anchor: int, name: str) -> None:
        """Between the def and its wrapper: the rest of the signature and the docstring only,
        so that the wrapper sits below the docstring (``__doc__`` stays) and above the first
        statement. Plain shapes are read from the text; others are parsed."""
        rows = self.old[def_row:anchor]
        text = "".join(rows)
        if _DEF_OR_CLASS.search(text, len(rows[0])):
            self._parse_prelude(text, anchor, name)  # in a docstring, or a nested def: parse
            return
        first = self.old[anchor].lstrip(_WS)
        if first[:1] in "\"'" or first[:2].lower() in ("r'", 'r"', "u'", 'u"', "b'", 'b"', "f'", 'f"'):
            self._parse_prelude(text, anchor, name)  # a statement that starts with a string
            return
        end = def_row
        while end < anchor:
            signature = "".join(self.old[def_row:end + 1])
            if _HINT.search(signature):
                self._parse_prelude(text, anchor, name)
                return
            masked = _MASK.sub("", signature)
            if _balanced(masked) and masked.rstrip().endswith(":"):
                break
            end += 1
        else:
            raise _Corrupt(f"the wrapper of {name!r} is inside its signature")
        rest = self.old[end + 1:anchor]
        while rest and (_blank(rest[-1]) or _content(rest[-1]).startswith("#")):
            rest.pop()
        if rest and not _DOCSTRING.fullmatch("".join(rest)):
            self._parse_prelude(text, anchor, name)

    def _parse_prelude(self, text: str, anchor: int, name: str) -> None:
        probe = text + _ws(self.old[anchor]) + "pass\n"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse("if 1:\n" + probe if probe[:1] in _WS else probe)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            raise _Corrupt(f"the wrapper of {name!r} is not right below its signature and docstring") from None
        node = tree.body[0]
        if isinstance(node, ast.If):
            node = node.body[0]
        body = getattr(node, "body", None) or []
        # What the templates take for a docstring: any string statement (tree-sitter's view).
        docstring = len(body) == 2 and isinstance(body[0], ast.Expr) and (
            isinstance(body[0].value, ast.JoinedStr) or (isinstance(body[0].value, ast.Constant)
                                                         and isinstance(body[0].value.value, (str, bytes))))
        if not body or not isinstance(body[-1], ast.Pass) or (len(body) == 2 and not docstring) or len(body) > 2:
            raise _Corrupt(f"the wrapper of {name!r} is not right below its signature and docstring")

    def _check_header_place(self, j: int) -> None:
        """The header goes before the first statement after the docstring and the
        ``__future__`` imports."""
        content = _content(self.old[j])
        if not content or content.startswith("#") or _ws(self.old[j]) or content.startswith("from __future__"):
            raise _Corrupt("the module header is not above the first statement")
        before = self.old[:j]
        if all(_blank(line) or _content(line).startswith("#") for line in before):
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse("".join(before) + "pass\n")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            raise _Corrupt("the module header is inside a statement") from None
        body = tree.body[:-1]
        prelude_end = 0
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            prelude_end = body[0].end_lineno or 0
            body = body[1:]
        for stmt in body:
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
                prelude_end = stmt.end_lineno or 0
            elif stmt.lineno > prelude_end:  # (a statement on the prelude's last line comes with it)
                raise _Corrupt("the module header is not right after the docstring and __future__ imports")


def _bisect_before(rows: list[int], j: int) -> int:
    """Index of the last row < j in sorted ``rows`` (-1: none)."""
    return bisect.bisect_left(rows, j) - 1


def _hint_rows(text: str) -> list[int]:
    """The rows that hold a triple quote or end with a backslash continuation."""
    rows: list[int] = []
    row, at = 0, 0
    for match in _HINT.finditer(text):
        row += text.count("\n", at, match.start())
        at = match.start()
        if not rows or rows[-1] != row:
            rows.append(row)
    return rows


def check_output(original: str, output: str, *, target: str, import_name: str,
                 functions: Sequence[tuple[str, int]]) -> Verdict:
    """The verdict on ``output`` as ``original`` instrumented (``functions``: (qualname, def
    line) of each function the memo says it instrumented)."""
    try:
        check = PythonOutputCheck(original, output, target=target, import_name=import_name, functions=functions)
    except ValueError as exc:
        return Verdict(CORRUPT, str(exc))
    return check.run()
