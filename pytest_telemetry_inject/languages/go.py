"""Go through tree-sitter: functions, methods and function literals; one ``defer`` each.

What the inserted code looks like (``Q`` is the span name)::

    package shapes

    import "fmt"

    //line :1:1
    import _telemetry "example.com/mod/telemetryinject" /*line :3:1*/

    func (s *Square) Area() float64 {
    	defer _telemetry.End(_telemetry.Start("shapes.(*Square).Area"))
    //line :7:1
    	return s.side * s.side
    }

Every inserted statement has a line of its own, as ``gofmt`` wants it: the output of a
gofmt-clean file is gofmt-clean, and gofmt leaves the inserted lines where they are. The
lines move, but the compiler does not see it: a ``//line :N:1`` directive after each
inserted statement gives the next line its original number again (the file name stays the
file's), and the import is given line 1 and its line end the number of the line it follows
(``/*line :R:1*/``). Compiler errors, panics, ``go test`` and ``go vet`` output, coverage
and profiles name the original lines. The directives are written where gofmt's comment
grouping cannot pull them into a doc comment (before the first statement of a body, after
the import at the end of its line).

``Start`` runs when the ``defer`` statement does (it reads the clock); ``End`` runs on
every way out: a return, a panic, ``runtime.Goexit``. ``End`` never recovers: a panic goes
on with the same value and stack trace; results are untouched. No allocation per call.

Span names follow Go's own function names (``runtime.FuncForPC``): ``pkg.Func``,
``pkg.(*Type).Method``, ``pkg.Type.Method``, generic ones with ``[...]``; ``init``
functions ``pkg.init.0``, ``pkg.init.1``... numbered across the package's files in the
order the compiler reads them; function literals ``pkg.Func.func1`` (their order in the
enclosing function), a literal inside a literal ``pkg.Func.func1.1``, literals in
package-level variables ``pkg.glob..func1``.

Strip removes the inserted lines and directives in the form written here, as gofmt leaves
them, and in the older forms (``{ defer ...;`` on the brace's line, ``; import _telemetry``
on the last import's line, and those after gofmt); telemetry it does not recognise is an
error, never silently left behind. A file whose directives no longer match its lines (it
was edited after instrumentation, or is in an older form) is instrumented anew.

The runtime is the package ``telemetryinject`` at the module root (an importable path, so
that a program can call ``telemetryinject.Close()`` from any instrumented library); every
copy of it in one program shares one state (see the runtime's documentation).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import SourceSyntaxError, TemplateNotApplicable
from ..scriptlib import Edit, insert, insert_after, insert_text, split_lines
from . import BUILTIN
from .base import FunctionRecord, ParsedFile, StripResult, Template, tree_error
from .brace import (
    REASON_INSTRUMENTED,
    REASON_OPT_OUT,
    REASON_TRIVIAL,
    SKIP_FILE_COMMENT,
    VENDORED,
    BraceLanguage,
    Grammars,
    LazyGrammars,
    Match,
    RuntimeFiles,
    UnrecognisedTelemetry,
    _is_code_token,
    char_column,
    cut_matches,
    last_token,
    leading_ws,
    mark_same_line_duplicates,
    safe_name,
)
from .go_package import (
    GENERATED_PREFIX,
    RUNTIME_FILE,
    RUNTIME_FOLDER,
    RUNTIME_MARKER,
    TEST_MAIN_FILE,
    TEST_MAIN_MARKER,
    find_module,
    gopath_import_path,
    init_offset,
    runtime_source,
    test_main_source,
)

if TYPE_CHECKING:
    from ..settings import Settings

TEMPLATE_VERSION = 2
"""Version 2: the statement on a line of its own, with a //line directive (1: ``{ defer ...;``)."""
DEFER = 'defer _telemetry.End(_telemetry.Start("{name}"))'
DIRECTIVE = "//line :{line}:1"
INLINE = ' defer _telemetry.End(_telemetry.Start("{name}"));'
"""The form for a root function (main.main, TestMain) whose body is on one line."""
HEADER_MAP = "//line :1:1"
HEADER = 'import _telemetry "{path}" /*line :{line}:1*/'

# The inserted texts as they are found again: as written, as gofmt leaves them, and in the
# forms of version 1 (``{ defer ...;``, ``; import _telemetry "..."``).
_NAME = rb'"(?P<name>[^"\\\n]*)"'
_OWN_DEFER = re.compile(rb'(?m)^[ \t]*(?P<kw>defer) _telemetry\.End\(_telemetry\.Start\(' + _NAME
                        + rb'\)\)[ \t]*;?[ \t]*(?:\r?\n|\Z)')
_DIRECTIVE = re.compile(rb'//line :(?P<line>\d+):\d+[ \t]*(?:\r?\n|\Z)')
_INLINE_DEFER = re.compile(rb'(?<=\{) (?P<kw>defer) _telemetry\.End\(_telemetry\.Start\(' + _NAME + rb'\)\);')
_OWN_HEADER = re.compile(rb'(?m)^(?P<blank>[ \t]*\r?\n)?(?P<map>//line :1:1[ \t]*\r?\n)?(?P<kw>import) _telemetry '
                         rb'"(?P<name>[^"\\\n]*)"[ \t]*(?P<dir>/\*line :(?P<line>\d+):\d+\*/)?[ \t]*(?:\r?\n|\Z)')
_INLINE_HEADER = re.compile(rb'; (?P<kw>import) _telemetry "(?P<name>[^"\\\n]*)"')
_LEFTOVER = re.compile(rb'\b_telemetry\b')

_Position = tuple[Literal["inline"], int, int] | tuple[Literal["line"], int, str]
"""Where a function's deferred call goes: on the body's line (row, character column of the
brace's end) or on a line of its own (row, indent)."""

REASON_NO_BODY = "no body (implemented elsewhere)"
REASON_TINY = "tiny body (the compiler likely inlines it; a deferred call would stop that)"
REASON_ONE_LINE = "its first statement is on the line of its opening brace (an inserted line would split that line)"
REASON_SHARED_LINE = "its first statement shares its line with other text (an inserted line would split that line)"
TINY_BODY = 30
"""Bodies of at most this many syntax nodes (tree-sitter's count, tokens included: ``{ return
x.n }`` is 8, a three-line constructor about 25) are left alone when ``skip_trivial`` is on,
function literals as much as named functions (a literal passed to ``sort.Search`` runs once
per comparison): Go does not inline a function with a ``defer``, and a value that stayed on
the stack of the inlined code can then escape to the heap (one allocation per call).
``main.main`` and ``TestMain`` are never left alone for their size: their end writes the
telemetry of the whole program."""
REASON_DIRECTIVE = "a compiler directive that a deferred call could break ({})"
# Directives under which an added deferred call can fail to build or change behaviour.
_RISKY_DIRECTIVES = ("nosplit", "systemstack", "nowritebarrier", "nowritebarrierrec", "yeswritebarrierrec",
                     "norace", "nocheckptr", "uintptrescapes", "linkname", "cgo_unsafe_args", "registerparams")
_GENERATED = re.compile(r"^// Code generated .* DO NOT EDIT\.$", re.M)

_QUERY = """
(package_clause (package_identifier) @package)
(function_declaration) @func
(method_declaration) @method
(func_literal) @literal
(import_declaration) @import
"""


def _text(data: bytes, node: Any) -> str:
    return data[node.start_byte:node.end_byte].decode("utf-8", "surrogatepass")


class Found:
    """Everything this tool inserted in a Go file: the matches (byte ranges to cut), and for
    each, whether its ``//line`` numbers are still right."""

    def __init__(self) -> None:
        self.matches: list[Match] = []
        self.stale: set[int] = set()
        """Start bytes of the matches whose directive is missing, wrong or of an old form."""
        self.defers: dict[int, Match] = {}
        """The span openings by the byte of their ``defer`` keyword."""
        self.header: Match | None = None

    @property
    def header_stale(self) -> bool:
        return self.header is not None and self.header.start in self.stale


class GoLanguage(BraceLanguage):
    name = "go"
    runtime_marker = RUNTIME_MARKER
    """The first line of the runtime files this tool writes (left alone by every front door)."""
    extensions, interpreters = BUILTIN["go"][2:]  # the registry's table
    telemetry_shares_lines = False
    keeps_lines = False
    has_closes = False
    wrappers = (("package p\n", ""), ("package p\nfunc _() {\n", "\n}"), ("package p\nvar _ = []interface{}{\n", "\n}"))
    own_name = re.compile(r"\b_telemetry\b")

    def __init__(self) -> None:
        def load() -> object:
            import tree_sitter_go

            return tree_sitter_go.language()

        self._lazy = LazyGrammars({"go": load}, {"go": _QUERY})

    def grammars(self) -> Grammars:
        return self._lazy.get()

    def grammar_for(self, path: str | None) -> str:
        return "go"

    # -- finding what was inserted -------------------------------------------------------------

    def _tree_for(self, text: str, data: bytes) -> tuple[Any, int]:
        """A tree in which the inserted keywords can be told from strings and comments: the
        file's, or a function's source parsed inside a wrapper (with the prefix's length)."""
        tree = self.parse_tree(data, None)
        if not tree.root_node.has_error:
            return tree.root_node, 0
        for prefix, suffix in self.wrappers:
            other = self.parse_tree((prefix + text + suffix).encode("utf-8", "surrogatepass"), None)
            if not other.root_node.has_error:
                return other.root_node, len(prefix.encode())
        return tree.root_node, 0

    def scan(self, data: bytes, root: Any, offset: int = 0) -> Found:
        """Every inserted text in ``data`` (``root`` parsed it, shifted by ``offset``)."""
        found = Found()
        if b"_telemetry" not in data:
            return found
        candidates: list[tuple[int, Match, int | None, int]] = []  # (start, match, directive line, end row)
        for match in _OWN_DEFER.finditer(data):
            if not _is_code_token(root, match.start("kw") + offset, "defer"):
                continue
            end, line = match.end(), None
            directive = _DIRECTIVE.match(data, end)
            form = "gofmt"
            if directive is not None:
                end, line, form = directive.end(), int(directive.group("line")), "line"
            candidates.append((match.start(), Match("open", match.start(), end, _name(match), form), line,
                               match.start("kw")))
        for match in _INLINE_DEFER.finditer(data):
            if _is_code_token(root, match.start("kw") + offset, "defer"):
                candidates.append((match.start(), Match("open", match.start(), match.end(), _name(match), "inline"),
                                   None, match.start("kw")))
        for match in _OWN_HEADER.finditer(data):
            if not _is_code_token(root, match.start("kw") + offset, "import"):
                continue
            if match.group("blank") is not None and (match.group("map") or _blank_line_at(data, match.end())):
                start = match.start()  # the blank line written before it (or gofmt's, before an old one)
            else:
                start = match.start("map") if match.group("map") else match.start("kw")
            line = int(match.group("line")) if match.group("dir") else None
            form = "line" if match.group("map") and line is not None else "gofmt"
            candidates.append((start, Match("header", start, match.end(), _name(match), form), line, -1))
        for match in _INLINE_HEADER.finditer(data):
            if _is_code_token(root, match.start("kw") + offset, "import"):
                candidates.append((match.start(), Match("header", match.start(), match.end(), _name(match), "inline"),
                                   None, -1))
        candidates.sort(key=lambda c: c[0])
        removed_rows = 0
        last_end = -1
        for start, inserted, line, keyword in candidates:
            if start < last_end:
                continue
            last_end = inserted.end
            removed_rows += data.count(b"\n", inserted.start, inserted.end)
            if inserted.kind == "open":
                found.defers[keyword] = inserted
            elif found.header is None:
                found.header = inserted
            found.matches.append(inserted)
            if inserted.form == "inline" and inserted.kind == "open":
                continue  # current only for a root's one-line body: the function's record decides
            if inserted.form != "line":
                found.stale.add(inserted.start)
                continue
            # The line after the match becomes line (its row - rows removed so far + 1); a
            # defer's directive names it, the header's names the line before it.
            following = data.count(b"\n", 0, inserted.end) - removed_rows + 1
            expected = following if inserted.kind == "open" else following - 1
            if line != expected:
                found.stale.add(inserted.start)
        return found

    def find(self, data: bytes, root: Any, offset: int = 0) -> list[Match]:
        return self.scan(data, root, offset).matches

    def _snippet_matches(self, text: str, data: bytes) -> tuple[list[Match], int]:
        root, offset = self._tree_for(text, data)
        return self.find(data, root, offset), offset

    def strip(self, text: str, *, only: set[int] | None = None) -> StripResult:
        """Cut out every inserted line and text (``only``: those of the functions defined on
        these lines; the import then stays, unless its directive is out of date: then every
        function is being done anew and the import goes too). Telemetry left over that this
        tool does not recognise is an error (UnrecognisedTelemetry), never left behind."""
        if "_telemetry" not in text:
            return StripResult(text, [], False)
        data = text.encode("utf-8", "surrogatepass")
        root, offset = self._tree_for(text, data)
        found = self.scan(data, root, offset)
        matches = found.matches
        if only is not None:
            keep_header = found.header is not None and not found.header_stale
            owned = self._owned_by(text, data, [m for m in matches if m.kind == "open"], only)
            matches = sorted(owned + [m for m in matches if m.kind == "header" and not keep_header],
                             key=lambda m: m.start)
        stripped, spans, header_removed = cut_matches(data, matches)
        if only is None:
            self._check_go_leftovers(stripped, text)
        return StripResult(stripped.decode("utf-8", "surrogatepass"), spans, header_removed)

    def _check_go_leftovers(self, stripped: bytes, text: str, *, any_use: bool = False) -> None:
        """Telemetry still in the code once every recognised text is cut out (the runtime's
        package used, ``_telemetry.End(...)``, or imported under the name): say where.
        ``any_use``: any use of the name in the code counts (a name clash)."""
        if b"_telemetry" not in stripped:
            return
        if text.startswith(GENERATED_PREFIX):
            return  # the runtime and the generated TestMain: not instrumented code
        tree = self.parse_tree(stripped, None)
        root = tree.root_node
        offset = 0
        if root.has_error:
            for prefix, suffix in self.wrappers:
                other = self.parse_tree(prefix.encode() + stripped + suffix.encode(), None)
                if not other.root_node.has_error:
                    root, offset = other.root_node, len(prefix.encode())
                    break
        for match in _LEFTOVER.finditer(stripped):
            node = root.descendant_for_byte_range(match.start() + offset, match.end() + offset)
            if node is None or node.type not in ("identifier", "package_identifier") \
                    or node.start_byte != match.start() + offset:
                continue
            parent = node.parent
            ours = parent is not None and (parent.type == "import_spec" or (
                parent.type == "selector_expression" and parent.child_by_field_name("operand") == node))
            if ours or any_use:
                row = stripped.count(b"\n", 0, match.start()) + 1
                line = stripped.split(b"\n")[row - 1].decode("utf-8", "replace").strip()
                raise UnrecognisedTelemetry(
                    f"cannot strip: telemetry at line {row} is not in a form this tool wrote ({line[:80]!r}); "
                    "remove it by hand or instrument again first")

    # -- parsing ---------------------------------------------------------------------------------

    def parse(self, text: str, path: str, settings: Settings) -> ParsedFile:
        data = text.encode("utf-8", "surrogatepass")
        ts = self.grammars()
        tree = ts.parsers["go"].parse(data)
        root = tree.root_node
        if root.has_error:
            raise SourceSyntaxError(tree_error(root))
        lines = split_lines(text)
        captures = ts.QueryCursor(ts.queries["go"]).captures(root)
        package_nodes = captures.get("package", [])
        package = _text(data, package_nodes[0]) if package_nodes else "main"
        found = self.scan(data, root)
        events: list[tuple[int, int, str, Any]] = []
        for kind, key in (("f", "func"), ("m", "method"), ("l", "literal")):
            for node in captures.get(key, ()):
                events.append((node.start_byte, node.end_byte, kind, node))
        events.sort(key=lambda e: (e[0], -e[1]))
        is_test = os.path.basename(path).endswith("_test.go")
        init_number = init_offset(path, package) if any(
            kind == "f" and _text(data, node.child_by_field_name("name")) == "init"
            for _s, _e, kind, node in events) else 0
        # stack items: (end byte, qualname, literal counter holder, is a literal)
        stack: list[list[Any]] = []
        glob_counter = [0]
        records: list[tuple[int, FunctionRecord]] = []
        positions: dict[int, _Position] = {}
        for start, end, kind, node in events:
            while stack and stack[-1][0] <= start:
                stack.pop()
            if kind == "l":
                if stack:
                    parent = stack[-1]
                    parent[2] += 1
                    qualname = f"{parent[1]}.{parent[2]}" if parent[3] else f"{parent[1]}.func{parent[2]}"
                else:
                    glob_counter[0] += 1
                    qualname = f"{package}.glob..func{glob_counter[0]}"
                name = qualname.rpartition(".")[2]
                nested_in = stack[-1][1] if stack else None
            else:
                name, qualname = self._name(data, node, kind, package)
                if kind == "f" and name == "init" and node.child_by_field_name("type_parameters") is None:
                    name, qualname = f"init.{init_number}", f"{package}.init.{init_number}"
                    init_number += 1
                nested_in = None
            root_function = qualname == "main.main" or (is_test and kind == "f" and name == "TestMain")
            record, where = self._record(node, kind, qualname, name, nested_in, data, lines, path, settings,
                                         found, root_function)
            records.append((len(stack), record))
            if where is not None:
                positions[record.start_byte] = where
            stack.append([end, qualname, 0, kind == "l"])
        records.sort(key=lambda item: (item[1].start_line, -item[0], item[1].start_byte))
        functions = mark_same_line_duplicates([r for _d, r in records])
        header_present = VENDORED if found.header is not None else None
        if found.header_stale:
            # The directives after an out-of-date import are out of date too: all done anew.
            from dataclasses import replace

            functions = [replace(r, span_name=f"{r.span_name} (line directives out of date)")
                         if r.instrumented and r.span_name == r.qualname else r for r in functions]
        imports = captures.get("import", [])
        anchor = max(imports, key=lambda n: n.end_byte) if imports else None
        if anchor is None:
            anchor = next((c for c in root.named_children if c.type == "package_clause"), None)
        if anchor is None:
            raise SourceSyntaxError("no package clause")
        problem = None
        end = last_token(anchor).end_point
        rest = lines[end.row].encode("utf-8", "surrogatepass")[end.column:].strip()
        if rest and not rest.startswith(b"//") and not (rest.startswith(b"/*") and rest.endswith(b"*/")):
            problem = ("cannot add the runtime import on a line of its own: more code follows the last import "
                       f"on line {end.row + 1}")
        elif not lines[end.row].endswith("\n"):
            problem = "cannot add the runtime import: the file ends on its last import's line"
        header_at = end.row
        parsed = ParsedFile(self.name, path, text, lines, functions, header_at + 1, header_present)
        parsed.extra.update(positions=positions, header_at=header_at, package=package, header_place_problem=problem)
        parsed.file_skip_reason = self._file_skip(parsed, settings)
        return parsed

    def _file_skip(self, parsed: ParsedFile, settings: Settings) -> str | None:
        head = "".join(parsed.lines[:1])
        if head.startswith(RUNTIME_MARKER):
            return "the vendored telemetry runtime"
        if head.startswith(TEST_MAIN_MARKER):
            return "the TestMain this tool writes (the telemetry report of go test)"
        if settings.target != VENDORED:
            return f"Go supports only the vendored target (the runtime package written into the module), not {settings.target!r}"
        # Go's convention for generated files: a line before the package clause.
        clause_row = next((i for i, line in enumerate(parsed.lines) if line.startswith("package ")), len(parsed.lines))
        if _GENERATED.search("".join(parsed.lines[:clause_row])):
            return "generated code (// Code generated ... DO NOT EDIT.)"
        return self.file_skip_reason(parsed.lines, parsed.text, parsed.header_present, parsed.functions)

    def file_skip_reason(self, lines: Sequence[str], text: str, header_present: str | None,
                         records: Any) -> str | None:
        for line in lines[:30]:
            if SKIP_FILE_COMMENT.search(line):
                return "opted out (// telemetry: skip-file)"
        if header_present is None and "_telemetry" in text:
            try:  # what is left once this tool's texts are cut out: code that uses the name?
                self._check_go_leftovers(self.strip(text).text.encode("utf-8", "surrogatepass"), text, any_use=True)
            except UnrecognisedTelemetry:
                return "the file already uses a name this tool inserts (_telemetry)"
        return None

    @staticmethod
    def _name(data: bytes, node: Any, kind: str, package: str) -> tuple[str, str]:
        name = _text(data, node.child_by_field_name("name"))
        generic = node.child_by_field_name("type_parameters") is not None
        if kind == "f":
            own = name + ("[...]" if generic else "")
            return own, f"{package}.{own}"
        receiver = node.child_by_field_name("receiver")
        receiver_type = None
        for child in receiver.named_children:
            if child.type == "parameter_declaration":
                receiver_type = child.child_by_field_name("type")
                break
        pointer = False
        type_node = receiver_type
        while type_node is not None and type_node.type in ("pointer_type", "parenthesized_type"):
            pointer = pointer or type_node.type == "pointer_type"
            inner = [c for c in type_node.named_children]
            type_node = inner[0] if inner else None
        if type_node is None:
            type_name = "?"
        elif type_node.type == "generic_type":
            base = type_node.child_by_field_name("type")
            type_name = _text(data, base if base is not None else type_node) + "[...]"
        else:
            type_name = _text(data, type_node)
        type_name = safe_name(type_name)
        owner = f"(*{type_name})" if pointer else type_name
        return name, f"{package}.{owner}.{name}"

    def _record(self, node: Any, kind: str, qualname: str, name: str, nested_in: str | None, data: bytes,
                lines: list[str], path: str, settings: Settings, found: Found,
                root_function: bool) -> tuple[FunctionRecord, _Position | None]:
        body = node.child_by_field_name("body")
        start_row, end_row = node.start_point.row, node.end_point.row
        source = "".join(lines[start_row:end_row + 1])
        reason = None
        span_name = None
        where: _Position | None = None
        if body is None:
            reason = REASON_NO_BODY
            body_row = body_end_row = end_row
            body_start = body_end = node.end_byte
        else:
            body_row, body_end_row = body.start_point.row, body.end_point.row
            body_start, body_end = body.start_byte, body.end_byte
            statements = [c for c in body.named_children if c.type == "statement_list"]
            code = [c for c in statements[0].named_children if c.type != "comment"] if statements else []
            first = code[0] if code else None
            opening = found.defers.get(first.start_byte) if first is not None and first.type == "defer_statement" \
                else None
            if opening is not None:
                reason = REASON_INSTRUMENTED
                span_name = opening.name
                current = opening.start not in found.stale
                if opening.form == "inline":  # on the brace's line: the form of a root's one-line body only
                    current = root_function and len(code) > 1 and code[1].start_point.row == body_row
                if not current:
                    span_name += " (line directive out of date)"  # stale: the engine does it anew
            if reason is None and self.opted_out(lines, start_row, body_row):
                reason = REASON_OPT_OUT
            if reason is None and kind != "l":
                directive = self._risky_directive(lines, start_row)
                if directive:
                    reason = REASON_DIRECTIVE.format("//go:" + directive)
            if reason is None and first is None:
                reason = REASON_TRIVIAL
            if reason is None and settings.skip_trivial and not root_function \
                    and body.descendant_count <= TINY_BODY:
                reason = REASON_TINY
            if reason is None:
                assert first is not None  # a body without code has its reason (REASON_TRIVIAL)
                row = first.start_point.row
                before = data[first.start_byte - first.start_point.column:first.start_byte]
                if row == body_row and root_function:
                    reason, where = self._one_line_root(node, body, code, data, qualname)
                    if where is not None:
                        where = ("inline", row, char_column(lines[row], body.start_point.column + 1))
                elif row == body_row:
                    reason = REASON_ONE_LINE
                elif before.strip(b" \t"):
                    reason = REASON_SHARED_LINE
                else:
                    if first.type == "labeled_statement" or not before:
                        indent = leading_ws(lines[body_row]) + "\t"
                    else:
                        indent = before.decode("utf-8", "surrogatepass")
                    where = ("line", row, indent)
        record = FunctionRecord(
            language=self.name, path=path, qualname=qualname, name=name,
            start_line=start_row + 1, end_line=end_row + 1, def_line=start_row + 1,
            start_byte=node.start_byte, end_byte=node.end_byte,
            body_start_line=body_row + 1, body_end_line=body_end_row + 1,
            body_start_byte=body_start, body_end_byte=body_end,
            anchor_line=(where[1] + 1) if where else body_row + 1, indent=leading_ws(lines[start_row]),
            body_indent=where[2] if where and where[0] == "line" else "",
            sha256=hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest(),
            is_method=kind == "m", instrumented=span_name is not None, one_line=body_row == start_row,
            skip_reason=reason, nested_in=nested_in, span_name=span_name,
        )
        return record, where

    @staticmethod
    def _one_line_root(node: Any, body: Any, code: list[Any], data: bytes, qualname: str
                       ) -> tuple[str | None, _Position | None]:
        """main.main or TestMain with its body on one line: the deferred call goes on that
        line (``{ defer ...; ...``) when gofmt keeps the line whole after it (its header and
        statements within gofmt's 100 columns for a one-line body); else it is left alone,
        and the reason says how to have it instrumented."""
        header = data[node.start_byte:body.start_byte].strip()
        statements = [len(data[c.start_byte:c.end_byte]) for c in code] + [len(INLINE.format(name=qualname)) - 2]
        comments = sum(c.end_byte - c.start_byte for c in body.children if c.type == "comment")
        # go/printer's test for a one-line body: at most 5 statements, header and body
        # (statements, "; " between them, comments) within 100 columns.
        if len(header) + sum(statements) + 2 * (len(statements) - 1) + comments <= 100 and len(statements) <= 5:
            return None, ("inline", body.start_point.row, body.start_point.column + 1)
        return (f"{qualname} has its body on one line, too long to take the deferred call there (gofmt would "
                "split it): give the body lines of its own, or call telemetryinject.Close() at its end"), None

    @staticmethod
    def _risky_directive(lines: list[str], start_row: int) -> str | None:
        row = start_row - 1
        while row >= 0 and lines[row].startswith("//"):
            line = lines[row]
            if line.startswith("//go:"):
                word = line[5:].split(None, 1)[0] if line[5:].strip() else ""
                if word in _RISKY_DIRECTIVES:
                    return word
            row -= 1
        return None

    # -- templates -------------------------------------------------------------------------------

    def templates(self, record: FunctionRecord, settings: Settings) -> list[Template]:
        # The //line directive names the line the statement goes before: part of the
        # template's identity (its cache key), so that a function that moved is made anew.
        return [Template(f"go.defer.{VENDORED}.line{record.anchor_line}", TEMPLATE_VERSION, "defer", VENDORED)]

    def plan(self, template: Template, record: FunctionRecord, parsed: ParsedFile) -> list[Edit]:
        where = parsed.extra["positions"].get(record.start_byte)
        if where is None:
            raise TemplateNotApplicable("no place for the deferred call in this function")
        form, row, detail = where
        if form == "inline":
            return [insert_text(record.relative(row + 1), detail, INLINE.format(name=record.qualname))]
        before = record.relative(row + 1)
        return [insert(before, detail + DEFER.format(name=record.qualname)),
                insert(before, DIRECTIVE.format(line=row + 1))]

    def header(self, parsed: ParsedFile, settings: Settings, import_name: str) -> list[Any]:
        if parsed.header_present == settings.target:
            return []
        row = parsed.extra["header_at"]
        if row < 0:
            return []
        path = import_name.rpartition(":")[2]  # after the "init=N:" the file's first init number
        problem = parsed.extra.get("header_place_problem")
        if not problem and (not path or not _IMPORT_PATH.fullmatch(path)):
            problem = (f"cannot name the runtime package (import path {path!r}): no go.mod above the file, "
                       "and it is not under a GOPATH src folder")
        if problem:
            parsed.extra["header_problem"] = problem  # validation says it: the file is an error
            return [insert_text(row + 1, 0, "")]
        return [insert_after(row + 1, ""), insert_after(row + 1, HEADER_MAP),
                insert_after(row + 1, HEADER.format(path=path, line=row + 1))]

    # -- checks ----------------------------------------------------------------------------------

    def validate_output(self, parsed: ParsedFile, text: str, new_rows: Sequence[int]) -> str | None:
        """The output parses, strips back to the original byte for byte, every //line
        directive gives the next line its original number; and where Go is installed,
        gofmt reads it (and formatting it then stripping gives what formatting the original
        gives), and its package and tests compile with it (see ``toolcheck``)."""
        problem: str | None = parsed.extra.get("header_problem")
        if problem:
            return problem
        data = text.encode("utf-8", "surrogatepass")
        tree = self.parse_tree(data, parsed.path)
        if tree.root_node.has_error:
            return f"the output does not parse: {tree_error(tree.root_node)}"
        found = self.scan(data, tree.root_node)
        if found.stale:
            return "a //line directive does not give the next line its original number"
        pieces: list[bytes] = []
        at = 0
        for match in found.matches:
            pieces.append(data[at:match.start])
            at = match.end
        pieces.append(data[at:])
        stripped = b"".join(pieces).decode("utf-8", "surrogatepass")
        expected = self.strip(parsed.text).text if "_telemetry" in parsed.text else parsed.text
        if stripped != expected:
            return "stripping the output does not give back the original file"
        from . import toolcheck

        return toolcheck.check_go(parsed.path, expected, text, found.header.name if found.header else "")

    # -- the vendored runtime ----------------------------------------------------------------------

    def vendored_runtime(self, path: Path, root: Path, settings: Settings) -> RuntimeFiles:
        """The runtime package goes to ``telemetryinject`` under the module root (the folder
        of go.mod) when that is inside the scan root, else under the scan root; its import
        path is the module path (from go.mod, or the path under GOPATH's src) plus that
        folder. A package with tests and no TestMain gets one (``go test`` then writes the
        report). The import name carries the number of the file's first ``init`` function
        (the file's result depends on the other files of its package)."""
        root_resolved = root.resolve()
        folder = path.resolve().parent
        module_dir, module_path = find_module(folder)
        if module_dir is not None and (module_dir == root_resolved or root_resolved in module_dir.parents):
            home = module_dir
        else:
            home = root_resolved
        import_base = ""
        if module_dir is not None and (home == module_dir or module_dir in home.parents):
            relative = home.relative_to(module_dir).as_posix()
            import_base = module_path if relative == "." else f"{module_path}/{relative}"
        else:
            import_base = gopath_import_path(home) or ""
        import_name = f"{import_base}/{RUNTIME_FOLDER.as_posix()}" if import_base else ""
        files: list[tuple[Path, bytes]] = [(home.relative_to(root_resolved) / RUNTIME_FILE, runtime_source())]
        if import_name:
            test_main = test_main_source(str(folder), import_name)
            if test_main is not None:
                try:
                    files.append((folder.relative_to(root_resolved) / TEST_MAIN_FILE, test_main))
                except ValueError:
                    pass
            number = init_offset(str(path), "")
            if number:
                # The import path stays last (what the pre-commit hook looks for in the file).
                import_name = f"init={number}:{import_name}"
        return RuntimeFiles(import_name, tuple(files))

    def is_runtime_file(self, path: str | os.PathLike[str]) -> bool:
        try:
            with open(path, "rb") as handle:
                return handle.read(len(GENERATED_PREFIX)) == GENERATED_PREFIX.encode()
        except OSError:
            return False


def _name(match: re.Match[bytes]) -> str:
    return match.group("name").decode("utf-8", "surrogatepass")


def _blank_line_at(data: bytes, position: int) -> bool:
    end = data.find(b"\n", position)
    return end >= 0 and not data[position:end].strip(b" \t\r")


_IMPORT_PATH = re.compile(r"[A-Za-z0-9_.~+\-/]+")
