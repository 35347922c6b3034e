"""What JavaScript, TypeScript and Go share: languages with braces, where no line may move.

Their telemetry goes *inside* existing lines (``scriptlib.insert_text``): after a body's
opening ``{`` and before its closing ``}``, and the runtime import at the start (or end) of
an existing line. Every original line keeps its number, so stack traces, coverage and
source maps of the instrumented code point at the real source.

Strip is the exact inverse: each inserted text is a fixed string around the span name; a
match counts only where tree-sitter sees its first keyword as code (not inside a string, a
template, a regular expression or a comment), and it is cut out byte for byte.

This module holds the parts every such language uses: per-thread tree-sitter parsers,
marker matching and stripping, character columns from byte columns, and the checks the
engine calls (``check_syntax``, ``validate_output``, ``snippet_parses``, ``equivalent``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SourceSyntaxError
from ..scriptlib import split_lines
from .base import FunctionRecord, Language, ParsedFile, StripResult, tree_error

if TYPE_CHECKING:
    pass

TEMPLATE_VERSION = 1
VENDORED = "vendored"
NAME_PATTERN = rb'"(?P<name>[^"\\\n]*)"'
"""A span name inside the inserted text: a string literal without quotes, backslashes or
line breaks (qualnames are made safe before they are used)."""

REASON_TRIVIAL = "trivial body (empty)"
REASON_INSTRUMENTED = "already instrumented"
REASON_OPT_OUT = "opted out (// telemetry: skip)"
REASON_SAME_LINE = "another function of the same name starts on this line"
SKIP_COMMENT = re.compile(r"//\s*telemetry:\s*skip\b(?!-)")
SKIP_FILE_COMMENT = re.compile(r"//\s*telemetry:\s*skip-file\b")

class UnrecognisedTelemetry(SourceSyntaxError):
    """Strip found this tool's names in the code in a form it did not write (reformatted,
    edited by hand): it says where instead of leaving them behind. The file is an error."""

    file_error = True


class Grammars(threading.local):
    """Tree-sitter parsers and queries, one set per thread (a Parser is not thread-safe)."""

    def __init__(self, loaders: dict[str, Callable[[], object]], queries: dict[str, str]) -> None:
        import tree_sitter

        self.QueryCursor = tree_sitter.QueryCursor
        self.languages = {name: tree_sitter.Language(load()) for name, load in loaders.items()}
        self.parsers = {name: tree_sitter.Parser(lang) for name, lang in self.languages.items()}
        self.queries = {name: tree_sitter.Query(self.languages[name], queries[name]) for name in queries}


class LazyGrammars:
    """A ``Grammars`` made on first use in each thread (importing grammars costs time)."""

    def __init__(self, loaders: dict[str, Callable[[], object]], queries: dict[str, str]) -> None:
        self._loaders = loaders
        self._queries = queries
        self._local = threading.local()

    def get(self) -> Grammars:
        found = getattr(self._local, "grammars", None)
        if found is None:
            found = self._local.grammars = Grammars(self._loaders, self._queries)
        return found


def error_count(root: Any) -> int:
    """ERROR and MISSING nodes in the tree (subtrees without errors are not visited)."""
    if not root.has_error:
        return 0
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            count += 1
        stack.extend(child for child in node.children if child.has_error or child.is_missing)
    return count


def last_token(node: Any) -> Any:
    """The last token of ``node`` that is code: tree-sitter lets a node end with the
    comments (extras) after it on its line (``{ ... } // note``)."""
    while node.child_count:
        index = node.child_count - 1
        child = node.child(index)
        while child.is_extra and index > 0:
            index -= 1
            child = node.child(index)
        if child.is_extra:
            break
        node = child
    return node


def char_column(line: str, byte_column: int) -> int:
    """A tree-sitter (UTF-8 byte) column as a column of the decoded line."""
    if line.isascii():
        return byte_column
    return len(line.encode("utf-8", "surrogatepass")[:byte_column].decode("utf-8", "surrogatepass"))


def leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t\x0c"))]


def safe_name(text: str) -> str:
    """A name that fits a string literal in every language here and the strip patterns:
    whitespace runs become one space, quotes and backslashes are replaced."""
    text = " ".join(text.split())
    text = text.replace('"', "'").replace("\\", "/").replace("`", "'")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:200]


@dataclass
class Match:
    """One inserted text found in a file (bytes of its UTF-8 encoding)."""

    kind: str
    """``open`` (a span starts), ``close`` (its end), ``header`` (the runtime import)."""
    start: int
    end: int
    name: str = ""
    form: str = ""
    """Which variant of the kind (``block``, ``expr``), for pairing opens with closes."""


_COMPILED: dict[bytes, re.Pattern[bytes]] = {}


def _compiled(pattern: bytes) -> re.Pattern[bytes]:
    found = _COMPILED.get(pattern)
    if found is None:
        found = _COMPILED[pattern] = re.compile(pattern)
    return found


@dataclass(frozen=True)
class Marker:
    """One kind of inserted text: ``pattern`` finds it; the keyword at ``token(match)`` must
    be a code token of type ``token_type`` for the match to count."""

    kind: str
    form: str
    pattern: bytes
    token_type: str
    token: Callable[[re.Match[bytes]], int]
    trim: Callable[[re.Match[bytes]], tuple[int, int]] | None = None
    """The (start, end) actually removed, when it is not the whole match."""

    @property
    def regex(self) -> re.Pattern[bytes]:
        return _compiled(self.pattern)


def _is_code_token(root: Any, position: int, token_type: str) -> bool:
    """Whether tree-sitter sees a ``token_type`` token (a keyword) at ``position``: inside a
    string, template, regular expression or comment the smallest node there is that literal."""
    node = root.descendant_for_byte_range(position, position + 1)
    return node is not None and node.type == token_type and node.start_byte == position


def find_markers(data: bytes, root: Any, markers: Sequence[Marker], offset: int = 0) -> list[Match]:
    """Every inserted text in ``data`` that is code, in order, without overlaps (``root``
    parsed ``data`` shifted right by ``offset`` bytes: a snippet inside a wrapper). Where
    matches overlap, the one that starts first wins, then the earlier marker."""
    candidates: list[tuple[int, int, int, Match]] = []
    for priority, marker in enumerate(markers):
        for match in marker.regex.finditer(data):
            if not _is_code_token(root, marker.token(match) + offset, marker.token_type):
                continue
            start, end = marker.trim(match) if marker.trim else (match.start(), match.end())
            name = match.groupdict().get("name")
            found = Match(marker.kind, start, end, name.decode("utf-8", "surrogatepass") if name else "",
                          marker.form)
            candidates.append((match.start(), priority, match.end(), found))
    candidates.sort(key=lambda c: (c[0], c[1]))
    out: list[Match] = []
    last_end = -1
    for start, _priority, end, found in candidates:
        if start < last_end:
            continue
        out.append(found)
        last_end = end
    return out


@dataclass
class RuntimeFiles:
    """What a language's vendored runtime needs for one source file: the name the file
    imports it by, and the files (paths relative to the scan root) to write once."""

    import_name: str
    files: tuple[tuple[Path, bytes], ...] = ()


@dataclass
class Snippet:
    """A function's source taken out of its file, parsed inside the first wrapper that
    makes its original parse cleanly (None: none does)."""

    wrapper: tuple[str, str] | None
    errors: int = 0


class BraceLanguage(Language):
    """Shared strip, checks and helpers; subclasses parse and plan."""

    telemetry_shares_lines = True
    keeps_lines = True
    """Whether the telemetry goes inside existing lines only (JavaScript, TypeScript), so
    that a line added or removed is an error."""
    markers: tuple[Marker, ...] = ()
    wrappers: tuple[tuple[str, str], ...] = (("", ""),)
    """(prefix, suffix) around a function's source taken alone, tried in order."""
    own_name: re.Pattern[str] = re.compile(r"\b_telemetry\w*")

    # -- grammar ---------------------------------------------------------------------------

    def grammar_for(self, path: str | None) -> str:
        """The grammar to parse ``path`` with (None: unknown, e.g. a snippet)."""
        raise NotImplementedError

    def alternative_grammars(self) -> tuple[str, ...]:
        """Grammars to try, in order, when the path is unknown."""
        return (self.grammar_for(None),)

    def grammars(self) -> Grammars:
        raise NotImplementedError

    def parse_tree(self, data: bytes, path: str | None) -> Any:
        """The tree of ``data``: with the path's grammar, or the first grammar that parses
        it without errors (the first one when none does)."""
        ts = self.grammars()
        if path is not None:
            return ts.parsers[self.grammar_for(path)].parse(data)
        first = None
        for name in self.alternative_grammars():
            tree = ts.parsers[name].parse(data)
            if not tree.root_node.has_error:
                return tree
            if first is None:
                first = tree
        return first

    # -- strip -----------------------------------------------------------------------------

    def find(self, data: bytes, root: Any, offset: int = 0) -> list[Match]:
        if b"_telemetry" not in data:
            return []
        return find_markers(data, root, self.markers, offset)

    def strip(self, text: str, *, only: set[int] | None = None) -> StripResult:
        """Cut out every inserted text (``only``: those of the functions defined on these
        lines; the runtime import then stays)."""
        if "_telemetry" not in text:
            return StripResult(text, [], False)
        data = text.encode("utf-8", "surrogatepass")
        matches, offset = self._snippet_matches(text, data)
        if only is not None:
            matches = self._owned_by(text, data, matches, only)
        rest, spans, header_removed = cut_matches(data, matches)
        if only is None and self.leftover is not None and b"_telemetry" in rest:
            self._check_leftovers(rest)
        return StripResult(rest.decode("utf-8", "surrogatepass"), spans, header_removed)

    leftover: re.Pattern[bytes] | None = None
    """What this tool's code looks like when strip did not recognise it (moved, reformatted):
    found in the code once everything recognised is cut out, it is an error."""
    _NOT_CODE = frozenset({"comment", "html_comment", "string", "string_fragment", "template_string",
                           "regex", "regex_pattern", "escape_sequence"})

    def _check_leftovers(self, rest: bytes) -> None:
        assert self.leftover is not None
        found = list(self.leftover.finditer(rest))
        if not found:
            return
        text = rest.decode("utf-8", "surrogatepass")
        tree = self.parse_tree(rest, None)
        root, offset = tree.root_node, 0
        if root.has_error:
            for prefix, suffix in self.wrappers[1:]:
                other = self.parse_tree((prefix + text + suffix).encode("utf-8", "surrogatepass"), None)
                if not other.root_node.has_error:
                    root, offset = other.root_node, len(prefix.encode())
                    break
        for match in found:
            node = root.descendant_for_byte_range(match.start() + offset, match.start() + offset + 1)
            if node is None or node.type in self._NOT_CODE:
                continue
            row = rest.count(b"\n", 0, match.start()) + 1
            line = rest.split(b"\n")[row - 1].decode("utf-8", "replace").strip()
            raise UnrecognisedTelemetry(
                f"cannot strip: telemetry at line {row} is not in a form this tool wrote ({line[:80]!r}); "
                "remove it by hand or instrument again first")

    def _snippet_matches(self, text: str, data: bytes) -> tuple[list[Match], int]:
        """The markers of a whole file, or of a function's source parsed in a wrapper."""
        tree = self.parse_tree(data, None)
        if not tree.root_node.has_error or len(self.wrappers) == 1:
            return self.find(data, tree.root_node), 0
        for prefix, suffix in self.wrappers[1:]:
            wrapped = (prefix + text + suffix).encode("utf-8", "surrogatepass")
            other = self.parse_tree(wrapped, None)
            if not other.root_node.has_error:
                offset = len(prefix.encode())
                return self.find(data, other.root_node, offset), offset
        return self.find(data, tree.root_node), 0

    def _owned_by(self, text: str, data: bytes, matches: list[Match], only: set[int]) -> list[Match]:
        """The matches that belong to functions defined on the lines ``only``: each open is
        owned by the innermost function whose body holds it; its close is its pair."""
        from ..settings import Settings

        parsed = self.parse(text, "<strip>", Settings(target=VENDORED))
        bodies = sorted(((r.body_start_byte, r.body_end_byte, r.def_line) for r in parsed.functions
                         if r.instrumented), key=lambda b: (b[0], -b[1]))
        keep: list[Match] = []
        stack: list[tuple[Match, bool]] = []
        for match in matches:
            if match.kind == "open":
                owner = 0
                for start, end, line in bodies:
                    if start > match.start:
                        break
                    if end > match.start:
                        owner = line
                wanted = owner in only
                if wanted:
                    keep.append(match)
                if self.has_closes:
                    stack.append((match, wanted))
            elif match.kind == "close":
                if not stack:
                    raise SourceSyntaxError("cannot strip telemetry: a span end without its start")
                _opened, wanted = stack.pop()
                if wanted:
                    keep.append(match)
        return keep

    has_closes = True

    # -- checks ----------------------------------------------------------------------------

    def check_syntax(self, text: str, path: str) -> str | None:
        tree = self.parse_tree(text.encode("utf-8", "surrogatepass"), path if path != "<function>" else None)
        if tree.root_node.has_error:
            return tree_error(tree.root_node)
        return None

    def validate_output(self, parsed: ParsedFile, text: str, new_rows: Sequence[int]) -> str | None:
        """The output parses without an ERROR node, has exactly the original's lines, and
        strips back to the original byte for byte."""
        if text.count("\n") != parsed.text.count("\n"):
            return "a line was added or removed (every insertion must stay on an existing line)"
        problem: str | None = parsed.extra.get("header_problem")
        if problem:
            return problem
        data = text.encode("utf-8", "surrogatepass")
        tree = self.parse_tree(data, parsed.path)
        if tree.root_node.has_error:
            return f"the output does not parse: {tree_error(tree.root_node)}"
        matches = self.find(data, tree.root_node)
        pieces: list[bytes] = []
        at = 0
        for match in matches:
            pieces.append(data[at:match.start])
            at = match.end
        pieces.append(data[at:])
        stripped = b"".join(pieces).decode("utf-8", "surrogatepass")
        expected = self.strip(parsed.text).text if "_telemetry" in parsed.text else parsed.text
        if stripped != expected:
            return "stripping the output does not give back the original file"
        return None

    def snippet(self, text: str) -> tuple[Snippet, Any]:
        """The first wrapper in which ``text`` parses cleanly, with its tree."""
        first: Any = None  # the first wrapper's tree (there is always one wrapper at least)
        for wrapper in self.wrappers:
            data = (wrapper[0] + text + wrapper[1]).encode("utf-8", "surrogatepass")
            tree = self.parse_tree(data, None)
            if not tree.root_node.has_error:
                return Snippet(wrapper), tree
            if first is None:
                first = tree
        return Snippet(None, error_count(first.root_node)), first

    def snippet_parses(self, snippet: str) -> str | None:
        """A function's instrumented source taken alone parses as well as its original
        does: cleanly in the wrapper (class body, object literal, function body...) where the
        original parses cleanly, else with no more errors than the original."""
        try:
            original = self.strip(snippet).text
        except SourceSyntaxError as exc:
            return str(exc)
        if self.keeps_lines and original.count("\n") != snippet.count("\n"):
            return "a line was added or removed"
        found, _tree = self.snippet(original)
        if found.wrapper is not None:
            prefix, suffix = found.wrapper
            tree = self.parse_tree((prefix + snippet + suffix).encode("utf-8", "surrogatepass"), None)
            if tree.root_node.has_error:
                return tree_error(tree.root_node)
            return None
        # The original does not parse alone in any wrapper (its lines hold part of another
        # construct): the output may have its errors, no more, and every inserted text must
        # have been recognised (an unrecognised one sits in a damaged region).
        data = snippet.encode("utf-8", "surrogatepass")
        tree = self.parse_tree(data, None)
        if error_count(tree.root_node) > found.errors:
            return tree_error(tree.root_node)
        recognised, _offset = self._snippet_matches(snippet, data)
        if len(recognised) != sum(len(marker.regex.findall(data)) for marker in self.markers):
            return tree_error(tree.root_node) if tree.root_node.has_error else "an inserted text is not code"
        return None

    def equivalent(self, original: str, other: str) -> bool:
        """The same code once this tool's telemetry is taken off both."""
        try:
            return self.strip(original).text == self.strip(other).text
        except SourceSyntaxError:
            return False

    # -- helpers for parse ---------------------------------------------------------------------

    def file_skip_reason(self, lines: Sequence[str], text: str, header_present: str | None,
                         records: Iterable[FunctionRecord]) -> str | None:
        for line in lines[:30]:
            if SKIP_FILE_COMMENT.search(line):
                return "opted out (// telemetry: skip-file)"
        if header_present is None and self.own_name.search(text):
            if not any(r.instrumented for r in records):
                return "the file already uses a name this tool inserts (_telemetry...)"
        return None

    @staticmethod
    def opted_out(lines: Sequence[str], first_row: int, last_row: int) -> bool:
        """``// telemetry: skip`` on a comment line just above the function, or on its lines
        up to where its body starts."""
        if first_row > 0 and lines[first_row - 1].lstrip().startswith("//") and \
                SKIP_COMMENT.search(lines[first_row - 1]):
            return True
        return any(SKIP_COMMENT.search(lines[row]) for row in range(first_row, min(last_row, len(lines) - 1) + 1))


def mark_same_line_duplicates(records: list[FunctionRecord]) -> list[FunctionRecord]:
    """Two functions with one name starting on one line would share a cache key (the key is
    the name and the lines): the later ones are left alone."""
    seen: set[tuple[str, int]] = set()
    out = []
    for record in records:
        key = (record.qualname, record.start_line)
        if key in seen and record.skip_reason is None:
            from dataclasses import replace

            record = replace(record, skip_reason=REASON_SAME_LINE)
        seen.add(key)
        out.append(record)
    return out


def _line_starts(data: bytes) -> list[int]:
    starts = [0]
    index = data.find(b"\n")
    while index >= 0:
        starts.append(index + 1)
        index = data.find(b"\n", index + 1)
    return starts


def _line_of(starts: list[int], position: int) -> int:
    import bisect

    return bisect.bisect_right(starts, position)


def cut_matches(data: bytes, matches: list[Match]) -> tuple[bytes, list[tuple[int, str]], bool]:
    """``data`` without the matched pieces (in order), the (line, name) of each span opened
    there, and whether the runtime import was among them: what a strip takes out."""
    spans = []
    header_removed = False
    pieces: list[bytes] = []
    at = 0
    starts = None
    for match in matches:
        if match.kind == "open":
            if starts is None:
                starts = _line_starts(data)
            spans.append((_line_of(starts, match.start), match.name))
        elif match.kind == "header":
            header_removed = True
        pieces.append(data[at:match.start])
        at = match.end
    pieces.append(data[at:])
    return b"".join(pieces), spans, header_removed


def parsed_file(language: str, path: str, text: str, lines: list[str], records: list[FunctionRecord],
                header_line: int, header_present: str | None) -> ParsedFile:
    return ParsedFile(language, path, text, lines, records, header_line, header_present)


def split(text: str) -> list[str]:
    return split_lines(text)


__all__ = [
    "BraceLanguage",
    "Grammars",
    "LazyGrammars",
    "Marker",
    "Match",
    "RuntimeFiles",
    "TEMPLATE_VERSION",
    "char_column",
    "field",
]
