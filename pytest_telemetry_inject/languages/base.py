"""What the engine needs from a language: records, templates, a header, strip and checks."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..scriptlib import Edit, split_lines

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass(frozen=True, slots=True)
class FunctionRecord:
    """One function definition found in a source file. Lines are 1-based, bytes index the
    UTF-8 encoding of the decoded text."""

    language: str
    path: str
    qualname: str
    """The span name: Python's ``__qualname__`` (``Outer.<locals>.inner``, ``Class.method``)."""
    name: str
    start_line: int
    """First line of the definition, its first decorator included."""
    end_line: int
    """Last line of the definition."""
    def_line: int
    """The line of the ``def`` (``function``, ``func``) keyword."""
    start_byte: int
    end_byte: int
    body_start_line: int
    body_end_line: int
    """Last line of the body's last statement (trailing comments excluded)."""
    body_start_byte: int
    body_end_byte: int
    anchor_line: int
    """Where a wrapper goes: the first statement after the docstring; 0 when there is none
    or it shares a line with what comes before it."""
    indent: str
    """Leading whitespace of the definition line."""
    body_indent: str
    """Leading whitespace of the anchor line ('' when there is no anchor)."""
    sha256: str
    """sha256 of the definition's source (whole lines, start_line to end_line)."""
    is_async: bool = False
    is_generator: bool = False
    is_method: bool = False
    decorators: tuple[str, ...] = ()
    """Decorator expressions, without the ``@``."""
    instrumented: bool = False
    """The function already carries this tool's telemetry."""
    one_line: bool = False
    """The body starts on the definition line."""
    keep: tuple[int, ...] = ()
    """Lines of the definition that start inside a multi-line string: never re-indented."""
    skip_reason: str | None = None
    """Why the function is not eligible (None: it is)."""
    nested_in: str | None = None
    """Qualname of the enclosing function, for nested functions."""
    span_name: str | None = None
    """The span name an instrumented function already carries (None: none, or unknown)."""

    @property
    def stale(self) -> bool:
        """Instrumented under another name (the function was renamed or moved)."""
        return self.instrumented and self.span_name is not None and self.span_name != self.qualname

    @property
    def is_decorated(self) -> bool:
        return bool(self.decorators)

    @property
    def unit(self) -> str:
        """The body's indentation step relative to the definition line."""
        if self.body_indent.startswith(self.indent):
            return self.body_indent[len(self.indent):]
        return ""

    def source(self, lines: Sequence[str]) -> str:
        return "".join(lines[self.start_line - 1:self.end_line])

    def relative(self, line: int) -> int:
        """A file line number as a line number of the function's own source."""
        return line - self.start_line + 1


@dataclass
class ParsedFile:
    """A decoded source file and the functions found in it."""

    language: str
    path: str
    text: str
    lines: list[str]
    functions: list[FunctionRecord]
    header_line: int
    """Line before which the module-level import goes (0: it cannot be placed)."""
    header_present: str | None = None
    """The target whose header the file already has, if any."""
    file_skip_reason: str | None = None
    """Why the whole file is left alone (opt-out comment, name clash), if it is."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Template:
    """A deterministic way to instrument a function: an id and version (cache key parts)."""

    id: str
    version: int
    style: str
    target: str


VerdictStatus = Literal["ok", "corrupt", "unsure"]


@dataclass
class OutputVerdict:
    """Whether a cached output is the original plus this tool's telemetry (``check_cached_output``)."""

    status: VerdictStatus
    """``ok``, ``corrupt`` (it is not what this tool writes for that original) or ``unsure``
    (the text alone cannot tell: the file is rebuilt)."""
    reason: str = ""
    original: tuple[int, ...] = ()
    """For ``ok``: the line map the output must have (original line of each output line)."""
    shift: tuple[int, ...] = ()


@dataclass
class StripResult:
    text: str
    spans: list[tuple[int, str]]
    """(line in the instrumented text, span name) of every span removed."""
    header_removed: bool


class Language(abc.ABC):
    """One language. Implementations register through the ``telemetry_inject_languages`` hook."""

    name: str = ""
    extensions: tuple[str, ...] = ()
    interpreters: tuple[str, ...] = ()
    telemetry_shares_lines: bool = False
    """Whether inserted code goes on the lines of the code (so that no line moves), rather
    than on lines of its own."""
    """Interpreter names that identify the language in a shebang line."""

    @abc.abstractmethod
    def parse(self, text: str, path: str, settings: Settings) -> ParsedFile:
        """Find the functions of ``text``; raise SourceSyntaxError if it does not parse."""

    @abc.abstractmethod
    def templates(self, record: FunctionRecord, settings: Settings) -> list[Template]:
        """The deterministic templates to try for ``record``, best first."""

    @abc.abstractmethod
    def plan(self, template: Template, record: FunctionRecord, parsed: ParsedFile) -> list[Edit]:
        """The edits (relative to the function's own lines) for ``template``; raise
        TemplateNotApplicable with a reason when it cannot be used."""

    @abc.abstractmethod
    def header(self, parsed: ParsedFile, settings: Settings, import_name: str) -> list[Any]:
        """What the inserted code needs at module level (empty when already present): lines
        to insert before ``parsed.header_line``, or edits in file line numbers (for
        languages where no line may move: ``scriptlib.insert_text`` on an existing line)."""

    @abc.abstractmethod
    def strip(self, text: str, *, only: set[int] | None = None) -> StripResult:
        """Remove everything this tool inserts; the exact inverse of instrumentation.
        ``only``: the definition lines of the functions to strip (the header then stays)."""

    @abc.abstractmethod
    def check_syntax(self, text: str, path: str) -> str | None:
        """None when ``text`` is valid, else a one-line message."""

    def validate_output(self, parsed: ParsedFile, text: str, new_rows: Sequence[int]) -> str | None:
        """None when ``text`` (``parsed`` instrumented; ``new_rows[i]`` is the row original
        row ``i`` moved to) is valid and strips back to the original; else a one-line reason."""
        problem = self.check_syntax(text, parsed.path)
        if problem is not None:
            original = self.check_syntax(parsed.text, parsed.path)
            if original is not None:
                return f"does not compile with this Python: {original}"
            return f"the output does not parse: {problem}"
        if self.strip(text).text != self.strip(parsed.text).text:
            return "stripping the output does not give back the original file"
        return None

    def check_cached_output(self, original: str, output: str, *, target: str, import_name: str,
                            functions: Sequence[tuple[str, int]]) -> OutputVerdict:
        """Whether ``output``, read from a cache this machine did not seal, is ``original``
        plus this tool's telemetry for ``target`` and nothing else (``functions``: (span
        name, definition line) of each function the cache says it instrumented). A language
        that cannot tell from the text answers ``unsure``, and the file is rebuilt."""
        return OutputVerdict("unsure", f"no check of cached {self.name} output")

    def snippet_parses(self, snippet: str) -> str | None:
        """Like check_syntax, for one function's source taken out of its file."""
        return self.check_syntax(snippet, "<function>")

    def equivalent(self, original: str, other: str) -> bool:
        """Whether ``other`` means the same code as ``original`` (text-equal by default)."""
        return original == other

    def split(self, text: str) -> list[str]:
        return split_lines(text)


def tree_error(root: Any) -> str:
    """Where the first ERROR or MISSING node is (only subtrees holding errors are visited)."""
    cursor = root.walk()
    while True:
        node = cursor.node
        if node.type == "ERROR" or node.is_missing:
            what = f"missing {node.type!r}" if node.is_missing else "syntax error"
            return f"{what} at line {node.start_point.row + 1}"
        if node.has_error and cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return "syntax error"
        while not cursor.node.has_error:
            if not cursor.goto_next_sibling():
                break
