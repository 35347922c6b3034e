"""Python through tree-sitter: function records, templates, the module header, strip.

What the inserted code looks like (``Q`` is the function's qualname)::

    # header, after the module docstring and ``from __future__`` imports
    from pytest_telemetry_inject import runtime as _telemetry_runtime
    _telemetry = _telemetry_runtime.tracer(__name__)

    def f():                          @_telemetry.instrument("Q")
        \"\"\"Doc.\"\"\"                      def f():
        with _telemetry.span("Q"):        ...
            ...                        (decorator style)
    (with style)

Generators use ``generator_span`` (the span must not become the caller's current span
while the generator is suspended). The ``otel`` target calls the OpenTelemetry tracer
(``start_as_current_span``; ``start_span`` for generators), the ``logging`` target wraps the
body in ``try``/``except``/``finally`` and logs the duration and any exception.

A single tree-sitter query per file finds functions, lambdas, ``yield`` and strings; all
else is read from the nodes it returns (walking the whole tree from Python is slow).
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import io
import re
import threading
import tokenize
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import FormNotAvailable, SourceSyntaxError, TemplateNotApplicable
from ..scriptlib import Edit, indent, insert, insert_after, is_blank, split_lines
from . import BUILTIN
from .base import FunctionRecord, Language, OutputVerdict, ParsedFile, StripResult, Template, tree_error

if TYPE_CHECKING:
    from tree_sitter import Node

    from ..settings import Settings

TEMPLATE_VERSION = 1
# The otel target's templates: 2 adds the code attributes (OTEL_ATTRIBUTES).
OTEL_TEMPLATE_VERSION = 2
STYLES = ("with", "try", "decorator")

_QUERY = """
(function_definition name: (identifier) @function_name) @function
(class_definition name: (identifier) @class_name) @class
(decorated_definition) @decorated
(lambda) @lambda
(yield) @yield
"""
# Where a string can span lines: triple quotes, or a backslash before the line end. Only
# the nodes at these places are looked at (capturing every string node costs far more).
_MULTILINE_STRING_HINT = re.compile(rb'"""|' + rb"'''|\\\r?\n")

_WS = " \t\x0c"
_NAME = r'"([^"\\\n]*)"'
# The otel target's spans carry the semantic conventions' code attributes (the function's
# fully qualified name, its file), written so that they stay true when the code moves: no
# line number, which an edit above the function would make wrong without touching it.
OTEL_ATTRIBUTES = ', attributes={{"code.function.name": __name__ + ".{name}", "code.file.path": __file__}}'
_ATTRS = r'(?:, attributes=\{"code\.function\.name": __name__ \+ "\.\2", "code\.file\.path": __file__\})?'
WITH_MARK = re.compile(r"with _telemetry\.(span|generator_span|start_as_current_span|start_span)\(" + _NAME + _ATTRS
                       + r"\):")
DECO_MARK = re.compile(r"@_telemetry\.(instrument|start_as_current_span)\(" + _NAME + _ATTRS + r"\)")
LOG_PROLOGUE = "_telemetry_t0 = _telemetry_clock()"
_LOG_NAME = re.compile(r'_telemetry\.debug\("%s took %\.6f s", ' + _NAME + r", _telemetry_clock\(\) - _telemetry_t0\)")
SKIP_COMMENT = re.compile(r"#\s*telemetry:\s*skip\b(?!-)")
SKIP_FILE_COMMENT = re.compile(r"#\s*telemetry:\s*skip-file\b")
_OWN_NAME = re.compile(r"\b_telemetry(?:_runtime|_trace|_logging|_clock|_t0|_exc)?\b")

_RUNTIME_IMPORT = "from pytest_telemetry_inject import runtime as _telemetry_runtime"
_TRACER_LINE = "_telemetry = _telemetry_runtime.tracer(__name__)"
HEADERS: dict[str, tuple[re.Pattern[str], ...]] = {
    # Order matters: the runtime's import also has the vendored form.
    "runtime": (re.compile(re.escape(_RUNTIME_IMPORT)), re.compile(re.escape(_TRACER_LINE))),
    "vendored": (re.compile(r"(?:from [\w.]+ )?import \w+ as _telemetry_runtime"),
                 re.compile(re.escape(_TRACER_LINE))),
    "otel": (re.compile(r"from opentelemetry import trace as _telemetry_trace"),
             re.compile(r"_telemetry = _telemetry_trace\.get_tracer\(__name__\)")),
    "logging": (re.compile(r"import logging as _telemetry_logging"),
                re.compile(r"from time import perf_counter as _telemetry_clock"),
                re.compile(r"_telemetry = _telemetry_logging\.getLogger\(__name__\)")),
}

REASON_LAMBDA = "lambda"
REASON_OVERLOAD = "typing.overload stub"
REASON_TRIVIAL = "trivial body (only a docstring, pass or ...)"
REASON_OPT_OUT = "opted out (# telemetry: skip)"
REASON_NO_TELEMETRY = "opted out (@no_telemetry)"
REASON_INSTRUMENTED = "already instrumented"


_TRY_START = re.compile(r"_telemetry_t = _telemetry\.(start|start_generator)\(\)")
_TRY_END = re.compile(r'_telemetry\.end\(' + _NAME + r", _telemetry_t\)")


def _try_epilogue(name: str) -> list[tuple[int, str]]:
    """(extra indentation levels, text) of the lines after the body, try style."""
    return [
        (0, "except BaseException:"),
        (1, f'_telemetry_t = _telemetry.fail("{name}", _telemetry_t)'),
        (1, "raise"),
        (0, "finally:"),
        (1, f'_telemetry.end("{name}", _telemetry_t)'),
    ]


def _try_form(first_line: str) -> tuple[str, Any, Any] | None:
    """For a prologue's first line: (kind, its epilogue builder, the regex of the
    epilogue's last line), or None. The logging target's form and the try style's."""
    if first_line == LOG_PROLOGUE:
        return "logging", _log_epilogue, _LOG_NAME
    if _TRY_START.fullmatch(first_line):
        return "try", _try_epilogue, _TRY_END
    return None


def _log_epilogue(name: str) -> list[tuple[int, str]]:
    """(extra indentation levels, text) of the lines after the body, logging target."""
    return [
        (0, "except Exception as _telemetry_exc:"),
        (1, f'_telemetry.debug("%s raised %r after %.6f s", "{name}", _telemetry_exc, '
            "_telemetry_clock() - _telemetry_t0)"),
        (1, "raise"),
        (0, "finally:"),
        (1, f'_telemetry.debug("%s took %.6f s", "{name}", _telemetry_clock() - _telemetry_t0)'),
    ]


class _TreeSitter(threading.local):
    """Parser and queries, one set per thread (a tree-sitter Parser is not thread-safe)."""

    def __init__(self) -> None:
        import tree_sitter
        import tree_sitter_python

        language = tree_sitter.Language(tree_sitter_python.language())
        self.QueryCursor = tree_sitter.QueryCursor
        self.parser = tree_sitter.Parser(language)
        self.query = tree_sitter.Query(language, _QUERY)


_TS: _TreeSitter | None = None


def _ts() -> _TreeSitter:
    global _TS
    if _TS is None:
        _TS = _TreeSitter()
    return _TS


def _leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(_WS))]


def _content(line: str) -> str:
    return line.strip(_WS + "\r\n")


def _end_row(node: Node) -> int:
    end = node.end_point
    if end.column == 0 and end.row > node.start_point.row:
        return end.row - 1
    return end.row


_STRING_PARTS = frozenset({"string_start", "string_content", "string_end", "escape_sequence",
                           "escape_interpolation"})


def _string_rows(root: Any, data: bytes) -> list[int]:
    """0-based rows that start inside a string (a multi-line string's second line onwards)."""
    rows: set[int] = set()
    seen: set[int] = set()
    for match in _MULTILINE_STRING_HINT.finditer(data):
        node = root.descendant_for_byte_range(match.start(), match.start() + 1)
        while node is not None and node.type in _STRING_PARTS:
            node = node.parent
        if node is None or node.type != "string" or node.start_byte in seen:
            continue
        seen.add(node.start_byte)
        first, last = node.start_point.row, node.end_point.row
        if last > first:
            rows.update(range(first + 1, last + 1))
    return sorted(rows)


def _body_statements(body: Any) -> tuple[Any, Any, Any, int]:
    """(first statement, second statement, last statement, statement count; 99 for "many")
    of a block, comments left out, reading as few nodes as it can."""
    count = body.named_child_count
    found: list[Any] = []
    index = 0
    while index < count and len(found) < 2:
        child = body.named_child(index)
        if child.type != "comment":
            found.append(child)
        index += 1
    if not found:
        return None, None, None, 0
    last = found[-1]
    for back in range(count - 1, index - 1, -1):
        child = body.named_child(back)
        if child.type != "comment":
            last = child
            break
    statements = 99  # only small counts matter (a trivial body)
    if count <= 8:
        statements = sum(1 for i in range(count) if body.named_child(i).type != "comment")
    return found[0], found[1] if len(found) > 1 else None, last, statements


def _is_docstring(stmt: Any) -> bool:
    """A string expression statement (parentheses allowed), as Python's ast sees a docstring."""
    if stmt.type != "expression_statement" or stmt.named_child_count != 1:
        return False
    value = stmt.named_child(0)
    while value.type == "parenthesized_expression" and value.named_child_count == 1:
        value = value.named_child(0)
    return value.type in ("string", "concatenated_string")


def _last_code_row(node: Any, lines: list[str], string_rows: list[int]) -> int:
    """The last row of ``node`` that holds code: tree-sitter lets a block end with the
    comments after its last statement; Python's ast (``end_lineno``) does not."""
    row, first = _end_row(node), node.start_point.row
    while row > first:
        index = bisect.bisect_left(string_rows, row)
        if index < len(string_rows) and string_rows[index] == row:
            break  # a line of a multi-line string
        content = lines[row].lstrip(_WS)
        if content and content[0] not in "#\r\n":
            break
        row -= 1
    return row


def _is_trivial(stmt: Any) -> bool:
    if stmt.type == "pass_statement":
        return True
    if stmt.type == "expression_statement" and stmt.named_child_count == 1:
        return stmt.named_children[0].type in ("ellipsis", "string", "concatenated_string")
    return False


def _statements(block: Any) -> list[Any]:
    return [child for child in block.named_children if child.type != "comment"]


def _text(node: Any) -> str:
    text: str = node.text.decode("utf-8", "surrogatepass")
    return text


def _sorted(nodes: Any) -> list[Any]:
    return sorted(nodes or (), key=lambda n: n.start_byte)


def _decorator_name(text: str) -> str:
    return text.split("(", 1)[0].strip()


def _syntax_error_message(exc: SyntaxError) -> str:
    return f"line {exc.lineno}: {exc.msg}"


class PythonLanguage(Language):
    name = "python"
    extensions, interpreters = BUILTIN["python"][2:]  # the registry's table

    def __init__(self) -> None:
        self._templates = {(style, target): Template(f"python.{style}.{target}",
                                                     OTEL_TEMPLATE_VERSION if target == "otel" else TEMPLATE_VERSION,
                                                     style, target)
                           for style in STYLES for target in HEADERS}

    # -- parsing -----------------------------------------------------------------------

    def parse(self, text: str, path: str, settings: Settings) -> ParsedFile:
        ts = _ts()
        data = text.encode("utf-8", "surrogatepass")
        tree = ts.parser.parse(data)
        root = tree.root_node
        if root.has_error:
            return self._parse_with_ast(text, path, settings, tree_error(root))
        lines = split_lines(text)
        captures = ts.QueryCursor(ts.query).captures(root)
        string_rows = _string_rows(root, data)
        decorated: dict[int, Any] = {}
        for node in captures.get("decorated", ()):
            definition = node.child_by_field_name("definition")
            if definition is not None and definition.type == "function_definition":
                decorated[definition.start_byte] = node
        # Scopes and yields in one sweep by position: a stack of the open scopes gives every
        # qualname, whether a def is a method, and which functions are generators (asking
        # tree-sitter for a node's parent walks down from the root, so it is avoided).
        events: list[tuple[int, int, str, str, Any]] = []
        for kind, nodes, names in (("f", "function", "function_name"), ("c", "class", "class_name")):
            for node, name in zip(_sorted(captures.get(nodes)), _sorted(captures.get(names))):
                events.append((node.start_byte, node.end_byte, kind, _text(name), node))
        for node in captures.get("lambda", ()):
            events.append((node.start_byte, node.end_byte, "l", "<lambda>", node))
        for node in captures.get("yield", ()):
            events.append((node.start_byte, node.end_byte, "y", "", None))
        events.sort(key=lambda e: (e[0], -e[1]))
        # stack items: (end byte, kind, qualname, enclosing function's qualname, start byte)
        stack: list[tuple[int, str, str, str | None, int]] = []
        generators: set[int] = set()
        records: list[FunctionRecord] = []
        defs: list[tuple[Any, str, bool, str | None]] = []
        for start, end, kind, name, node in events:
            while stack and stack[-1][0] <= start:
                stack.pop()
            parent = stack[-1] if stack else None
            if kind == "y":
                if parent is not None and parent[1] == "f":
                    generators.add(parent[4])
                continue
            if parent is None:
                qualname, enclosing = name, None
            else:
                qualname = parent[2] + ("." if parent[1] == "c" else ".<locals>.") + name
                enclosing = parent[2] if parent[1] != "c" else parent[3]
            stack.append((end, kind, qualname, enclosing, start))
            if kind == "f":
                defs.append((node, qualname, parent is not None and parent[1] == "c", enclosing))
            elif kind == "l":
                row, last = node.start_point.row, _end_row(node)
                records.append(FunctionRecord(
                    language=self.name, path=path, qualname=qualname, name="<lambda>",
                    start_line=row + 1, end_line=last + 1, def_line=row + 1, start_byte=start, end_byte=end,
                    body_start_line=row + 1, body_end_line=last + 1, body_start_byte=start, body_end_byte=end,
                    anchor_line=0, indent="", body_indent="", sha256="", one_line=True,
                    skip_reason=REASON_LAMBDA, nested_in=enclosing))
        for node, qualname, is_method, enclosing in defs:
            records.append(self._record(node, qualname, is_method, enclosing, decorated.get(node.start_byte),
                                        lines, data, path, string_rows, node.start_byte in generators, settings))
        records.sort(key=lambda r: (r.start_line, r.def_line))
        header_line, header_present = self._header_position(root, lines)
        parsed = ParsedFile(self.name, path, text, lines, records, header_line, header_present)
        parsed.file_skip_reason = self._file_skip_reason(parsed)
        parsed.extra["string_rows"] = string_rows
        return parsed

    def _file_skip_reason(self, parsed: ParsedFile) -> str | None:
        for line in parsed.lines[:30]:
            if SKIP_FILE_COMMENT.search(line):
                return "opted out (# telemetry: skip-file)"
        if parsed.header_present is None and _OWN_NAME.search(parsed.text):
            if not any(f.instrumented for f in parsed.functions):
                return "the file already uses a name this tool inserts (_telemetry...)"
        return None

    def _header_position(self, root: Any, lines: list[str]) -> tuple[int, str | None]:
        stmts = _statements(root)
        index, prelude_end = 0, -1
        if stmts and _is_docstring(stmts[0]):
            prelude_end, index = _end_row(stmts[0]), 1
        while index < len(stmts) and stmts[index].type == "future_import_statement":
            prelude_end, index = _end_row(stmts[index]), index + 1
        present = None
        for stmt in stmts[index:index + 4]:
            row = stmt.start_point.row
            if row == _end_row(stmt):
                target = _header_target(_content(lines[row]))
                if target:
                    present = target
                    break
        previous_end = prelude_end
        for stmt in stmts[index:]:
            row = stmt.start_point.row
            if row > previous_end:
                return row + 1, present
            previous_end = max(previous_end, _end_row(stmt))
        return 0, present

    def _record(self, node: Any, qualname: str, is_method: bool, nested_in: str | None, decorated: Any,
                lines: list[str], data: bytes, path: str, string_rows: list[int], is_generator: bool,
                settings: Settings) -> FunctionRecord:
        outer = decorated if decorated is not None else node
        start_row, def_row, end_row = outer.start_point.row, node.start_point.row, _end_row(node)
        body = node.child_by_field_name("body")
        first, second, last, count = _body_statements(body)
        body_row = body.start_point.row
        # The body shares a line with the signature when something precedes it on its line.
        one_line = body_row == def_row or body.start_point.column > len(_leading_ws(lines[body_row]))
        decorators: tuple[str, ...] = ()
        if decorated is not None:
            decorators = tuple(data[d.start_byte + 1:d.end_byte].decode("utf-8", "surrogatepass").strip()
                               for d in decorated.named_children if d.type == "decorator")
        has_doc = first is not None and _is_docstring(first)
        anchor = second if has_doc else first
        anchor_row = -1
        if anchor is not None and not one_line and (not has_doc or anchor.start_point.row > _end_row(first)):
            anchor_row = anchor.start_point.row
        body_end_row = _last_code_row(last, lines, string_rows) if last is not None else end_row
        trivial = count <= 3 and all(_is_trivial(s) for s in (first, second, last) if s is not None)
        return self._make_record(
            path=path, qualname=qualname, is_method=is_method, nested_in=nested_in, lines=lines,
            string_rows=string_rows, settings=settings, start_row=start_row, def_row=def_row, end_row=end_row,
            start_byte=outer.start_byte, end_byte=node.end_byte, body_row=body_row, body_end_row=body_end_row,
            body_start_byte=body.start_byte, body_end_byte=body.end_byte, anchor_row=anchor_row, one_line=one_line,
            decorators=decorators, is_async=data.startswith(b"async", node.start_byte), is_generator=is_generator,
            trivial=trivial)

    def _make_record(self, *, path: str, qualname: str, is_method: bool, nested_in: str | None, lines: list[str],
                     string_rows: list[int], settings: Settings, start_row: int, def_row: int, end_row: int,
                     start_byte: int, end_byte: int, body_row: int, body_end_row: int, body_start_byte: int,
                     body_end_byte: int, anchor_row: int, one_line: bool, decorators: tuple[str, ...],
                     is_async: bool, is_generator: bool, trivial: bool) -> FunctionRecord:
        """The record from a function's shape (0-based rows; ``anchor_row`` -1 for none),
        whichever parser read it: tree-sitter, or Python's own (:meth:`_parse_with_ast`)."""
        indent_ws = _leading_ws(lines[def_row])
        body_indent = _leading_ws(lines[anchor_row]) if anchor_row >= 0 else ""
        source = "".join(lines[start_row:end_row + 1])
        lo = bisect.bisect_left(string_rows, start_row)
        hi = bisect.bisect_right(string_rows, end_row)
        keep = tuple(row + 1 for row in string_rows[lo:hi])

        span_name = None
        for decorator in decorators:
            match = DECO_MARK.fullmatch("@" + decorator)
            if match:
                span_name = match.group(2)
        instrumented = span_name is not None
        if not instrumented and anchor_row >= 0:
            anchor_text = _content(lines[anchor_row])
            match = WITH_MARK.fullmatch(anchor_text)
            if match:
                span_name = match.group(2)
            elif _TRY_START.fullmatch(anchor_text):
                match = _TRY_END.fullmatch(_content(lines[body_end_row]))
                span_name = match.group(1) if match else None
                instrumented = True
            instrumented = instrumented or match is not None or anchor_text == LOG_PROLOGUE
        reason = None
        names = [_decorator_name(d) for d in decorators]
        if instrumented:
            reason = REASON_INSTRUMENTED
        elif any(n == "overload" or n.endswith(".overload") for n in names):
            reason = REASON_OVERLOAD
        elif any(n == "no_telemetry" or n.endswith(".no_telemetry") for n in names):
            reason = REASON_NO_TELEMETRY
        elif any(SKIP_COMMENT.search(lines[row]) for row in range(def_row, body_row + 1)):
            reason = REASON_OPT_OUT
        elif settings.skip_trivial and trivial:
            reason = REASON_TRIVIAL
        return FunctionRecord(
            language=self.name, path=path, qualname=qualname, name=qualname.rpartition(".")[2],
            start_line=start_row + 1, end_line=end_row + 1, def_line=def_row + 1,
            start_byte=start_byte, end_byte=end_byte,
            body_start_line=body_row + 1, body_end_line=body_end_row + 1,
            body_start_byte=body_start_byte, body_end_byte=body_end_byte,
            anchor_line=anchor_row + 1, indent=indent_ws, body_indent=body_indent,
            sha256=hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest(),
            is_async=is_async, is_generator=is_generator,
            is_method=is_method, decorators=decorators, instrumented=instrumented, one_line=one_line,
            keep=keep, skip_reason=reason, nested_in=nested_in, span_name=span_name,
        )

    # -- valid Python that tree-sitter refuses -------------------------------------------------

    def _parse_with_ast(self, text: str, path: str, settings: Settings, problem: str) -> ParsedFile:
        """The file's records from Python's own parser, for a file tree-sitter reports an error
        in (``problem``) that this interpreter compiles: Python is the authority on what is
        Python. tree-sitter's grammar refuses some valid files (a continuation line inside
        brackets at column 0, ``return (x +\n1)``; the standard library's
        ``test/test_compile.py``). The records are the ones tree-sitter's would be: the same
        lines, qualnames, decorators, docstrings and anchors; the rows that start inside a
        string come from the tokenizer. A file that does not compile either is refused with
        tree-sitter's message, as before."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                compile(text, path, "exec", dont_inherit=True)
                tree = ast.parse(text, path)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                raise SourceSyntaxError(problem) from None
        lines = split_lines(text)
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line.encode("utf-8", "surrogatepass")))

        def byte(row: int, col: int) -> int:  # (ast columns are UTF-8 byte offsets)
            return starts[row] + col

        string_rows = _token_string_rows(text)
        records: list[FunctionRecord] = []

        def visit(node: ast.AST, scope: tuple[str, str, str | None] | None) -> None:
            # scope: (kind "f" / "c" / "l", its qualname, the enclosing function's qualname).
            # A definition's decorators, defaults, annotations and bases belong to the scope
            # around it (Python evaluates them there); only its body is its own.
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                    visit(child, scope)
                    continue
                name = "<lambda>" if isinstance(child, ast.Lambda) else child.name
                if scope is None:
                    qualname, enclosing = name, None
                else:
                    qualname = scope[1] + ("." if scope[0] == "c" else ".<locals>.") + name
                    enclosing = scope[1] if scope[0] != "c" else scope[2]
                kind = "c" if isinstance(child, ast.ClassDef) else "l" if isinstance(child, ast.Lambda) else "f"
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):  # kind "f"
                    records.append(self._ast_record(child, qualname, scope is not None and scope[0] == "c",
                                                    enclosing, lines, byte, path, string_rows, settings))
                elif isinstance(child, ast.Lambda):  # kind "l"
                    row, last = child.lineno - 1, _ast_end_row(child)
                    start, end = byte(row, child.col_offset), byte(last, _ast_end_col(child))
                    records.append(FunctionRecord(
                        language=self.name, path=path, qualname=qualname, name="<lambda>",
                        start_line=row + 1, end_line=last + 1, def_line=row + 1, start_byte=start, end_byte=end,
                        body_start_line=row + 1, body_end_line=last + 1, body_start_byte=start, body_end_byte=end,
                        anchor_line=0, indent="", body_indent="", sha256="", one_line=True,
                        skip_reason=REASON_LAMBDA, nested_in=enclosing))
                inner = (kind, qualname, enclosing)
                for field, value in ast.iter_fields(child):
                    parts = value if isinstance(value, list) else [value]
                    for part in parts:
                        if not isinstance(part, ast.AST):
                            continue
                        if field == "body":
                            # a def's or a class's statements, a lambda's expression
                            visit(ast.Module(body=[part], type_ignores=[]) if isinstance(part, ast.stmt)
                                  else ast.Expression(body=part) if isinstance(part, ast.expr) else part, inner)
                        else:
                            visit(ast.Expression(body=part) if isinstance(part, ast.expr) else part, scope)

        visit(tree, None)
        records.sort(key=lambda r: (r.start_line, r.def_line))
        header_line, header_present = _ast_header_position(tree, lines)
        parsed = ParsedFile(self.name, path, text, lines, records, header_line, header_present)
        parsed.file_skip_reason = self._file_skip_reason(parsed)
        parsed.extra["string_rows"] = string_rows
        parsed.extra["parser"] = "ast"
        return parsed

    def _ast_record(self, node: ast.FunctionDef | ast.AsyncFunctionDef, qualname: str, is_method: bool,
                    nested_in: str | None, lines: list[str], byte: Any, path: str, string_rows: list[int],
                    settings: Settings) -> FunctionRecord:
        start_row, col = _ast_start(node)
        if node.decorator_list:
            col = _at_sign(lines, start_row, col)
        def_row, end_row = node.lineno - 1, _ast_end_row(node)
        body = node.body
        first, last = body[0], body[-1]
        second = body[1] if len(body) > 1 else None
        body_row, body_col = _ast_start(first)
        if getattr(first, "decorator_list", None):
            body_col = _at_sign(lines, body_row, body_col)
        one_line = body_row == def_row or body_col > len(_leading_ws(lines[body_row]).encode())
        decorators = tuple(_decorator_text(lines, d) for d in node.decorator_list)
        has_doc = _ast_is_docstring(first)
        anchor = second if has_doc else first
        anchor_row = -1
        if anchor is not None and not one_line and (not has_doc or _ast_start(anchor)[0] > _ast_end_row(first)):
            anchor_row = _ast_start(anchor)[0]
        # tree-sitter's block (and so the function) ends with the comments after its last
        # statement that are indented as deep as the body; Python's ends with the statement.
        if not one_line:
            end_row = _trailing_comments(lines, end_row, len(_leading_ws(lines[body_row])))
        trivial = len(body) <= 3 and all(_ast_is_trivial(s) for s in (first, second, last) if s is not None)
        return self._make_record(
            path=path, qualname=qualname, is_method=is_method, nested_in=nested_in, lines=lines,
            string_rows=string_rows, settings=settings, start_row=start_row, def_row=def_row, end_row=end_row,
            start_byte=byte(start_row, col), end_byte=byte(end_row, len(lines[end_row].rstrip("\r\n").encode())),
            body_row=body_row, body_end_row=_ast_end_row(last),
            body_start_byte=byte(body_row, body_col), body_end_byte=byte(end_row, len(lines[end_row].rstrip("\r\n").encode())),
            anchor_row=anchor_row, one_line=one_line, decorators=decorators,
            is_async=isinstance(node, ast.AsyncFunctionDef), is_generator=_ast_is_generator(node), trivial=trivial)

    # -- templates ------------------------------------------------------------------------

    def templates(self, record: FunctionRecord, settings: Settings) -> list[Template]:
        styles = [settings.style] + [s for s in STYLES if s != settings.style]
        return [self._templates[(style, settings.target)] for style in styles]

    def plan(self, template: Template, record: FunctionRecord, parsed: ParsedFile) -> list[Edit]:
        if template.style == "decorator":
            return self._plan_decorator(template, record)
        if template.style == "try":
            if template.target not in ("runtime", "vendored"):
                raise FormNotAvailable(f"the {template.target} target has no try form")
            return self._plan_body(record, parsed, _try_prologue(record), _try_epilogue(record.qualname))
        return self._plan_with(template, record, parsed)

    def _plan_decorator(self, template: Template, record: FunctionRecord) -> list[Edit]:
        target, name = template.target, record.qualname
        if target == "logging":
            raise FormNotAvailable("the logging target has no decorator form")
        if target == "otel":
            if record.is_async or record.is_generator:
                raise TemplateNotApplicable("OpenTelemetry's decorator does not cover async functions or generators")
            text = f'@_telemetry.start_as_current_span("{name}"{OTEL_ATTRIBUTES.format(name=name)})'
        else:
            text = f'@_telemetry.instrument("{name}")'
        return [insert(record.relative(record.def_line), record.indent + text)]

    def _plan_with(self, template: Template, record: FunctionRecord, parsed: ParsedFile) -> list[Edit]:
        name, target = record.qualname, template.target
        if target == "logging":
            return self._plan_body(record, parsed, [LOG_PROLOGUE, "try:"], _log_epilogue(name))
        generator = record.is_generator
        attributes = ""
        if target == "otel":
            call = "start_span" if generator else "start_as_current_span"
            attributes = OTEL_ATTRIBUTES.format(name=name)
        else:
            call = "generator_span" if generator else "span"
        return self._plan_body(record, parsed, [f'with _telemetry.{call}("{name}"{attributes}):'], [])

    def _plan_body(self, record: FunctionRecord, parsed: ParsedFile, prologue: list[str],
                   epilogue: list[tuple[int, str]]) -> list[Edit]:
        """Indent the body (after the docstring) one level under ``prologue``'s lines, and
        add ``epilogue``'s (indentation levels, text) after it."""
        if record.one_line:
            raise TemplateNotApplicable("the body is on the def line")
        if not record.anchor_line:
            raise TemplateNotApplicable("no statement after the docstring on a line of its own")
        unit = record.unit
        if not unit or unit.strip(" \t"):
            raise TemplateNotApplicable("the body's indentation is not deeper than the def line's")
        bi, rel = record.body_indent, record.relative
        first, last = rel(record.anchor_line), rel(record.body_end_line)
        keep = [rel(k) for k in record.keep if record.anchor_line <= k <= record.body_end_line]
        edits: list[Edit] = [indent(first, last, unit, bi, keep)]
        edits.extend(insert(first, bi + text) for text in prologue)
        if epilogue:
            if not parsed.lines[record.body_end_line - 1].endswith("\n"):
                raise TemplateNotApplicable("the body ends the file without a line ending")
            # The epilogue runs on every call: in the line map it stands for the first line
            # of the body (which does too), not for the body's last line (which may not).
            edits.extend(insert_after(last, bi + unit * level + text, maps_to=first) for level, text in epilogue)
        return edits

    # -- header ---------------------------------------------------------------------------

    def header(self, parsed: ParsedFile, settings: Settings, import_name: str) -> list[str]:
        target = settings.target
        if parsed.header_present == target:
            return []
        if target == "runtime":
            return [_RUNTIME_IMPORT, _TRACER_LINE]
        if target == "vendored":
            package, _, module = import_name.rpartition(".")
            line = f"from {package} import {module}" if package else f"import {module}"
            return [line + " as _telemetry_runtime", _TRACER_LINE]
        if target == "otel":
            return ["from opentelemetry import trace as _telemetry_trace",
                    "_telemetry = _telemetry_trace.get_tracer(__name__)"]
        return ["import logging as _telemetry_logging",
                "from time import perf_counter as _telemetry_clock",
                "_telemetry = _telemetry_logging.getLogger(__name__)"]

    # -- strip ----------------------------------------------------------------------------

    def strip(self, text: str, *, string_rows: Sequence[int] | None = None,
              tree: ast.Module | None = None, only: set[int] | None = None) -> StripResult:
        """Remove this tool's telemetry. The structure comes from Python's own parser (the
        text must parse with this interpreter); the rows that start inside strings from
        tree-sitter, unless given (validation maps them from the original file). ``only``:
        the ``def`` lines of the functions to strip; the module header then stays."""
        if "_telemetry" not in text:  # nothing of ours: no need to parse
            return StripResult(text, [], False)
        if text[:1] in _WS:
            # One function's source taken out of a class or function: strip it inside a block.
            wrapped = self.strip("if 1:\n" + text, string_rows=None if string_rows is None else
                                 [row + 1 for row in string_rows], only=only)
            return StripResult(wrapped.text[len("if 1:\n"):], [(line - 1, name) for line, name in wrapped.spans],
                               wrapped.header_removed)
        if tree is None:
            tree = _ast_parse(text, "cannot strip telemetry")
        lines = split_lines(text)
        delete: set[int] = set()
        blocks: list[tuple[int, int, int]] = []  # (wrapper row, first body row, last body row)
        spans: list[tuple[int, str]] = []
        for function in _ast_functions(tree.body):
            if only is not None and function.lineno not in only:
                continue
            for decorator in function.decorator_list:
                row = decorator.lineno - 1
                if decorator.end_lineno == decorator.lineno and "_telemetry" in lines[row]:
                    match = DECO_MARK.fullmatch(_content(lines[row]))
                    if match:
                        delete.add(row)
                        spans.append((row + 1, match.group(2)))
            found = _wrapper_of(function, lines)
            if found is not None:
                _wrapper, name, rows, block = found
                delete.update(rows)
                blocks.append(block)
                spans.append((rows[0] + 1, name))
        header_removed = False
        for stmt in tree.body[:16] if only is None else ():  # the header follows the docstring and __future__ imports
            row = stmt.lineno - 1
            if stmt.end_lineno == stmt.lineno and _header_target(_content(lines[row])):
                delete.add(row)
                header_removed = True
        if blocks and string_rows is None:
            ts = _ts()
            data = text.encode("utf-8", "surrogatepass")
            string_rows = _string_rows(ts.parser.parse(data).root_node, data)
        keep = set(string_rows or ())
        for wrapper, first_row, last_row in sorted(blocks):
            outer_ws = _leading_ws(lines[wrapper])
            inner_ws = _leading_ws(lines[first_row])
            if not inner_ws.startswith(outer_ws) or len(inner_ws) <= len(outer_ws):
                raise SourceSyntaxError(f"cannot strip telemetry: line {first_row + 1} is not indented under its wrapper")
            unit = inner_ws[len(outer_ws):]
            both = outer_ws + unit
            for row in range(wrapper + 1, last_row + 1):
                line = lines[row]
                if row in keep or is_blank(line):
                    continue
                if line.startswith(both):
                    lines[row] = outer_ws + line[len(both):]
                elif line.startswith(unit):
                    lines[row] = line[len(unit):]
                else:
                    raise SourceSyntaxError(f"cannot strip telemetry: line {row + 1} lost its indentation")
        stripped = "".join(line for row, line in enumerate(lines) if row not in delete)
        return StripResult(stripped, spans, header_removed)

    # -- checks ---------------------------------------------------------------------------

    @staticmethod
    def epilogue(target: str, name: str) -> list[tuple[int, str]]:
        """The lines after a wrapped body, (extra indentation levels, text): the logging
        target's, else the try style's (``python_check`` reads cached output with them)."""
        return (_log_epilogue if target == "logging" else _try_epilogue)(name)

    def check_cached_output(self, original: str, output: str, *, target: str, import_name: str,
                            functions: Sequence[tuple[str, int]]) -> OutputVerdict:
        from .python_check import check_output

        return check_output(original, output, target=target, import_name=import_name, functions=functions)

    def check_syntax(self, text: str, path: str, *, flags: int = 0) -> str | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                compile(text, path, "exec", flags, dont_inherit=True)
            except SyntaxError as exc:
                return _syntax_error_message(exc)
            except (ValueError, MemoryError, RecursionError) as exc:
                return f"cannot compile: {exc}"
        return None

    def validate_output(self, parsed: ParsedFile, text: str, new_rows: Sequence[int]) -> str | None:
        """One ``ast.parse`` of the output serves as the syntax check and as strip's structure
        (a second tree-sitter parse would cost as much again); string rows come from the
        original, mapped to the new rows. Two errors only the compiler reports are checked
        by hand: a ``__future__`` import that is no longer first, and blocks nested past
        CPython's limit of 20."""
        try:
            tree = _ast_parse(text, "the output does not parse")
        except SourceSyntaxError as exc:
            return self._unless_original_broken(parsed, str(exc))
        statements = tree.body[1:] if tree.body and _ast_is_docstring(tree.body[0]) else tree.body
        seen_other = False
        for stmt in statements:
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
                if seen_other:
                    return self._unless_original_broken(parsed, "a __future__ import is no longer first")
            else:
                seen_other = True
        deep = _too_deep(tree.body)
        if deep:
            return self._unless_original_broken(parsed, f"line {deep}: blocks nest past CPython's limit")
        rows = parsed.extra.get("string_rows", ())
        stripped = self.strip(text, string_rows=[new_rows[r] for r in rows], tree=tree)
        # The input may carry telemetry already (functions instrumented earlier): both must
        # strip to the same code.
        expected = self.strip(parsed.text, string_rows=rows).text if "_telemetry" in parsed.text else parsed.text
        if stripped.text != expected:
            return "stripping the output does not give back the original file"
        return None

    def _unless_original_broken(self, parsed: ParsedFile, problem: str) -> str:
        original = self.check_syntax(parsed.text, parsed.path)
        if original is not None:
            return f"does not compile with this Python: {original}"
        return problem

    def snippet_parses(self, snippet: str) -> str | None:
        # Syntax only: a nested function taken alone has no binding for its `nonlocal`s.
        try:
            tree = _ast_parse(_wrap_snippet(snippet), "the function does not parse")
        except SourceSyntaxError as exc:
            return str(exc)
        deep = _too_deep(tree.body)
        return f"line {deep}: blocks nest past CPython's limit" if deep else None

    def equivalent(self, original: str, other: str) -> bool:
        """Equal as syntax trees (positions ignored)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                before = ast.parse(_wrap_snippet(original))
                after = ast.parse(_wrap_snippet(other))
        except (SyntaxError, ValueError):
            return False
        return ast.dump(before) == ast.dump(after)


def _ast_end_row(node: ast.stmt | ast.expr) -> int:
    """0-based row of a node's last line."""
    end = node.end_lineno
    assert end is not None  # ast.parse sets it on every statement and expression
    return end - 1


def _ast_end_col(node: ast.stmt | ast.expr) -> int:
    """Byte column just after a node's last character."""
    end = node.end_col_offset
    assert end is not None  # ast.parse sets it on every statement and expression
    return end


def _ast_start(node: ast.stmt) -> tuple[int, int]:
    """(0-based row, byte column) where a statement starts: a decorated definition starts at
    its first ``@`` (tree-sitter's decorated_definition)."""
    decorators = getattr(node, "decorator_list", None)
    if decorators:
        first = decorators[0]
        return first.lineno - 1, first.col_offset  # (the "@" is before it: see _at_sign)
    return node.lineno - 1, node.col_offset


def _at_sign(lines: list[str], row: int, col: int) -> int:
    """The byte column of the ``@`` before a decorator expression that starts at ``col``."""
    head = lines[row].encode("utf-8", "surrogatepass")[:col]
    at = head.rfind(b"@")
    return at if at >= 0 else col


def _trailing_comments(lines: list[str], row: int, depth: int) -> int:
    """The last row of the comment lines after ``row`` indented at least ``depth`` columns
    (blank lines between them allowed), or ``row``."""
    end, probe = row, row + 1
    while probe < len(lines):
        content = lines[probe].lstrip(_WS)
        if not content.strip("\r\n"):
            probe += 1
            continue
        if content[0] != "#" or len(lines[probe]) - len(content) < depth:
            break
        end = probe
        probe += 1
    return end


def _decorator_text(lines: list[str], decorator: ast.expr) -> str:
    """A decorator's text without its ``@``, as tree-sitter's record has it."""
    first, last = decorator.lineno - 1, _ast_end_row(decorator)
    raw = "".join(lines[first:last + 1]).encode("utf-8", "surrogatepass")
    end = len(raw) - len(lines[last].encode("utf-8", "surrogatepass")) + _ast_end_col(decorator)
    return raw[decorator.col_offset:end].decode("utf-8", "surrogatepass").strip()


def _ast_is_trivial(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Pass):
        return True
    return isinstance(stmt, ast.Expr) and (isinstance(stmt.value, ast.JoinedStr) or (
        isinstance(stmt.value, ast.Constant) and (stmt.value.value is Ellipsis or isinstance(stmt.value.value, str))))


def _ast_is_generator(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A yield in the function's own scope (not in a nested def, lambda or class)."""
    todo: list[ast.AST] = list(function.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))
    return False


def _ast_header_position(tree: ast.Module, lines: list[str]) -> tuple[int, str | None]:
    """``_header_position`` from Python's parser: the line before which the module header
    goes (after the docstring and ``__future__`` imports), and the target whose header the
    file has."""
    stmts = tree.body
    index, prelude_end = 0, -1
    if stmts and _ast_is_docstring(stmts[0]):
        prelude_end, index = _ast_end_row(stmts[0]), 1
    while index < len(stmts) and isinstance(future := stmts[index], ast.ImportFrom) and future.module == "__future__":
        prelude_end, index = _ast_end_row(future), index + 1
    present = None
    for stmt in stmts[index:index + 4]:
        row = _ast_start(stmt)[0]
        if row == _ast_end_row(stmt):
            target = _header_target(_content(lines[row]))
            if target:
                present = target
                break
    previous_end = prelude_end
    for stmt in stmts[index:]:
        row = _ast_start(stmt)[0]
        if row > previous_end:
            return row + 1, present
        previous_end = max(previous_end, _ast_end_row(stmt))
    return 0, present


def _token_string_rows(text: str) -> list[int]:
    """0-based rows that start inside a string, from Python's tokenizer (a string token, or
    an f-string from its start to its end, that spans lines)."""
    rows: set[int] = set()
    depth, opened = 0, 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            name = tokenize.tok_name[token.type]
            if name == "FSTRING_START":
                if depth == 0:
                    opened = token.start[0]
                depth += 1
            elif name == "FSTRING_END":
                depth -= 1
                if depth == 0 and token.end[0] > opened:
                    rows.update(range(opened, token.end[0]))
            elif token.type == tokenize.STRING and token.end[0] > token.start[0] and depth == 0:
                rows.update(range(token.start[0], token.end[0]))  # 1-based start: the next row, 0-based
    except (tokenize.TokenError, SyntaxError):
        pass
    return sorted(rows)


def _ast_parse(text: str, what: str) -> ast.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(text)
        except SyntaxError as exc:
            raise SourceSyntaxError(f"{what}: {_syntax_error_message(exc)}") from None
        except (ValueError, RecursionError, MemoryError) as exc:
            raise SourceSyntaxError(f"{what}: {exc}") from None


_AST_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def _ast_functions(statements: list[ast.stmt]) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every def, outer before inner, in source order. Only statement lists are walked:
    a def is always a statement, and expressions are most of a tree."""
    for stmt in statements:
        if isinstance(stmt, _AST_FUNCTIONS):
            yield stmt
        for field in _BODIES:
            children = getattr(stmt, field, None)
            if children:
                if field in ("handlers", "cases"):
                    for child in children:
                        yield from _ast_functions(child.body)
                else:
                    yield from _ast_functions(children)


def _ast_is_docstring(stmt: ast.stmt) -> bool:
    if not isinstance(stmt, ast.Expr):
        return False
    value = stmt.value
    return isinstance(value, ast.JoinedStr) or (isinstance(value, ast.Constant) and isinstance(value.value, (str, bytes)))


_LOOPS = (ast.For, ast.AsyncFor, ast.While)
_WITHS = (ast.With, ast.AsyncWith)
_TRIES = (ast.Try, getattr(ast, "TryStar", ast.Try))
_COMPOUND = _AST_FUNCTIONS + (ast.ClassDef, ast.If) + _LOOPS + _WITHS + _TRIES + (getattr(ast, "Match", ast.If),)
BLOCK_LIMIT = 20  # CPython's CO_MAXBLOCKS


def _too_deep(statements: list[ast.stmt], depth: int = 0) -> int:
    """The line of a block nested too deeply for CPython's compiler (which takes 20 and
    refuses 21), or 0. Counted so that it can only over-estimate: each ``with`` item counts
    one, each ``try`` two."""
    for stmt in statements:
        if not isinstance(stmt, _COMPOUND):
            continue
        if isinstance(stmt, _AST_FUNCTIONS) or isinstance(stmt, ast.ClassDef):
            inner = 0  # a new code object counts afresh
        elif isinstance(stmt, _LOOPS):
            inner = depth + 1
        elif isinstance(stmt, _WITHS):
            inner = depth + len(stmt.items)
        elif isinstance(stmt, _TRIES):
            inner = depth + 2
        else:
            inner = depth
        if inner > BLOCK_LIMIT:
            return stmt.lineno
        for field in _BODIES:
            children = getattr(stmt, field, None)
            if children:
                if field in ("handlers", "cases"):
                    for child in children:
                        found = _too_deep(child.body, inner)
                        if found:
                            return found
                else:
                    found = _too_deep(children, inner)
                    if found:
                        return found
    return 0


def wrappers(tree: ast.Module, lines: list[str]) -> list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.stmt]]:
    """Each function of the tree whose body this tool wrapped, and the wrapper: the ``with``
    statement, or the ``try`` statement of a try-shaped form (``lines``: the tree's text)."""
    found = []
    for function in _ast_functions(tree.body):
        wrapper = _wrapper_of(function, lines)
        if wrapper is not None:
            found.append((function, wrapper[0]))
    return found


def _wrapper_of(function: ast.FunctionDef | ast.AsyncFunctionDef,
                lines: list[str]) -> tuple[ast.stmt, str, list[int], tuple[int, int, int]] | None:
    """The statement this tool wrapped the function's body in, the span's name, the rows the
    wrapper added (its first line first) and its block (wrapper row, first and last body
    row); None for a function without one."""
    body = function.body
    index = 1 if _ast_is_docstring(body[0]) else 0
    if len(body) <= index:
        return None
    anchor = body[index]
    row = anchor.lineno - 1
    if "_telemetry" not in lines[row]:
        return None
    head = _content(lines[row])
    match = WITH_MARK.fullmatch(head) if isinstance(anchor, ast.With) else None
    if match and isinstance(anchor, ast.With):
        if anchor.body[0].lineno - 1 > row:
            return anchor, match.group(2), [row], (row, anchor.body[0].lineno - 1, _ast_end_row(anchor.body[-1]))
        return None
    if len(body) > index + 1 and _try_form(head) is not None:
        found = _strip_try_form(head, body[index + 1], lines)
        if found is not None:
            rows, block, name = found
            return body[index + 1], name, [row, *rows], block
    return None


def _strip_try_form(head: str, stmt: ast.stmt, lines: list[str]) -> tuple[list[int], tuple[int, int, int], str] | None:
    """The rows a try-shaped wrapper (the try style, the logging target) added around a body,
    if ``head`` is its prologue's first line and ``stmt`` its try statement."""
    form = _try_form(head)
    if form is None or not isinstance(stmt, ast.Try) or len(stmt.handlers) != 1 or stmt.orelse \
            or not stmt.finalbody:
        return None
    _kind, epilogue, end = form
    row = stmt.lineno - 1
    if _content(lines[row]) != "try:":
        return None
    tail = list(range(stmt.handlers[0].lineno - 1, _ast_end_row(stmt) + 1))
    match = end.fullmatch(_content(lines[tail[-1]]))
    if match is None:
        return None
    name = match.group(1)
    expected = [text for _, text in epilogue(name)]
    if len(tail) != len(expected) or [_content(lines[r]) for r in tail] != expected:
        return None
    return [row] + tail, (row, stmt.body[0].lineno - 1, _ast_end_row(stmt.body[-1])), name


def _try_prologue(record: FunctionRecord) -> list[str]:
    call = "start_generator" if record.is_generator else "start"
    return [f"_telemetry_t = _telemetry.{call}()", "try:"]


def _wrap_snippet(snippet: str) -> str:
    """A function's source taken out of a class or function is indented: put it in a block."""
    if snippet[:1] in (" ", "\t", "\x0c"):
        return "if 1:\n" + snippet
    return snippet


def _header_target(content: str) -> str | None:
    for target, patterns in HEADERS.items():
        if any(p.fullmatch(content) for p in patterns):
            return target
    return None
