"""JavaScript through tree-sitter: function records, the span template, the runtime import.

What the inserted code looks like (``Q`` is the function's qualname; nothing else changes
and no line is added, so every line keeps its number)::

    function f(a) { const _telemetry_s = _telemetry.span("Q"); try {
      ...
    } catch (_telemetry_e) { _telemetry_s.error(_telemetry_e); throw _telemetry_e; } finally { _telemetry_s.end(); } }

    const g = x => { const _telemetry_s = _telemetry.span("g"); try { return (x * 2); } catch ... } }

The ``try``/``finally`` inside the body ends the span on every way out: ``return``, a
throw, and for generators and async functions when they finish (``finally`` runs when a
generator is exhausted or closed, when an async function's promise settles). The
``catch`` counts the error and throws the same value on. A body that starts with
directives (``"use strict"``) gets its opening after them, so they stay directives.

The runtime import goes at the start of the first statement's line (after a ``#!`` line
and the file's directives): ``import * as _telemetry from "./telemetry_utils.mjs"; `` in an
ES module, ``const _telemetry = require("./telemetry_utils.cjs"); `` in CommonJS (by
extension, then by the file's import/export declarations, then by the ``type`` the nearest
package.json states). It is recognised again as formatters and import sorters leave it.

Span names are ``module:qualname`` (``lodash/_baseGet.js:baseGet``); qualnames, and the
bindings anonymous functions are named after: see docs/languages.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SourceSyntaxError, TemplateNotApplicable
from ..scriptlib import Edit, insert_text, split_lines
from . import BUILTIN
from .base import FunctionRecord, ParsedFile, Template, tree_error
from .brace import (
    NAME_PATTERN,
    REASON_INSTRUMENTED,
    REASON_OPT_OUT,
    REASON_TRIVIAL,
    SKIP_FILE_COMMENT,
    TEMPLATE_VERSION,
    VENDORED,
    BraceLanguage,
    Grammars,
    LazyGrammars,
    Marker,
    RuntimeFiles,
    char_column,
    last_token,
    leading_ws,
    mark_same_line_duplicates,
    safe_name,
)

if TYPE_CHECKING:
    from ..settings import Settings

# -- the inserted texts ----------------------------------------------------------------------------

OPEN = 'const _telemetry_s = _telemetry.span("{name}"); try {{'
CLOSE = ("} catch (_telemetry_e) { _telemetry_s.error(_telemetry_e); throw _telemetry_e; } "
         "finally { _telemetry_s.end(); } ")
# Expression bodies use their own variable, so that neither form's text can be read as the
# other's around original code (``{ return (`` or ``); }`` may follow or precede a block's).
EXPR_OPEN = '{{ const _telemetry_a = _telemetry.span("{name}"); try {{ return ('
EXPR_CLOSE = ("); } catch (_telemetry_e) { _telemetry_a.error(_telemetry_e); throw _telemetry_e; } "
              "finally { _telemetry_a.end(); } }")
HEADER_REQUIRE = 'const _telemetry = require("{spec}"); '
HEADER_IMPORT = 'import * as _telemetry from "{spec}"; '
HEADER_IMPORT_REQUIRE = 'import _telemetry = require("{spec}"); '

_OPEN_RE = rb'const _telemetry_s = _telemetry\.span\(' + NAME_PATTERN + rb'\); try \{'
_EXPR_OPEN_RE = rb'\{ const _telemetry_a = _telemetry\.span\(' + NAME_PATTERN + rb'\); try \{ return \('
_CLOSE_RE = re.escape(CLOSE.encode())
_Position = tuple[str, int, int, int, int, str]
"""Where a function's span goes: (``block`` or ``expr``, opening row, its character column,
closing row, its character column, ``before`` / ``after`` the opening's neighbour for a block)."""
# The runtime import, as written and as formatters and import sorters leave it (another
# quote, no semicolon, a line of its own): the runtime's own file name only.
_SPEC = rb'(?P<q>["\'])(?P<name>(?:\.{1,2}/)[^"\'\\\n]*?telemetry_utils(?:\.[cm]js)?)(?P=q)'


def _open_trim(match: re.Match[bytes]) -> tuple[int, int]:
    # The opening goes after `{` with a space before it, or (after directives) before the
    # first statement with a space after it: one adjacent space is part of it. Where both
    # are spaces, taking either leaves the same text.
    if match.group("lead"):
        return match.start(), match.end() - len(match.group("trail") or b"")
    return match.start(), match.end()


def _header_trim(match: re.Match[bytes]) -> tuple[int, int]:
    """The import with the space written after it; alone on its line (moved there by a
    formatter or an import sorter), the whole line."""
    data, start, end = match.string, match.start(), match.end()
    line_start = data.rfind(b"\n", 0, start) + 1
    line_end = data.find(b"\n", end)
    if line_end < 0:
        line_end = len(data)
    if not data[line_start:start].strip() and not data[end:line_end].strip():
        return line_start, min(line_end + 1, len(data))
    if data[end:end + 1] == b" ":
        return start, end + 1
    return start, end


MARKERS = (
    Marker("open", "expr", _EXPR_OPEN_RE, "const", lambda m: m.start() + 2),
    Marker("close", "expr", re.escape(EXPR_CLOSE.encode()), "catch", lambda m: m.start() + 5),
    Marker("open", "block", rb"(?P<lead> )?" + _OPEN_RE + rb"(?P<trail> )?", "const",
           lambda m: m.start() + (1 if m.group("lead") else 0), _open_trim),
    Marker("close", "block", _CLOSE_RE, "catch", lambda m: m.start() + 2),
    Marker("header", "require", rb"const _telemetry = require\(" + _SPEC + rb"\);?", "const", lambda m: m.start(),
           _header_trim),
    Marker("header", "import", rb"import \* as _telemetry from " + _SPEC + rb";?", "import", lambda m: m.start(),
           _header_trim),
    Marker("header", "import-require", rb"import _telemetry = require\(" + _SPEC + rb"\);?", "import",
           lambda m: m.start(), _header_trim),
)
# What is left of this tool's code when strip cannot recognise it (moved, reformatted).
_LEFTOVER = re.compile(rb"\b_telemetry\.span\(|\b_telemetry_[sa]\.(?:end|error)\(|\bimport \* as _telemetry\b"
                       rb"|\b_telemetry = require\(")
_BINDING_TYPES = frozenset({"identifier", "shorthand_property_identifier", "shorthand_property_identifier_pattern"})

RUNTIME_MARKER = "// telemetry-inject: vendored runtime."
RUNTIME_STEM = "telemetry_utils"
RUNTIME_FILES = ("telemetry_utils.cjs", "telemetry_utils.mjs", "telemetry_utils.d.cts", "telemetry_utils.d.mts")

REASON_DERIVED_CONSTRUCTOR = ("constructor of a derived class with property initializers, parameter properties or "
                              "private names (TypeScript requires its super() call at the top level)")
REASON_BLOCK_CONFLICT = "the function {!r} is declared in its body twice, or also with var (it cannot move into a block)"
REASON_TRIVIAL_EXPR = "trivial body (a name or a constant)"
REASON_DIRECTIVE_ONLY = "trivial body (only directives)"

_TRIVIAL_EXPRESSIONS = frozenset({"identifier", "number", "string", "true", "false", "null", "undefined", "this",
                                  "property_identifier", "regex"})
_FUNCTIONS = ("function_declaration", "generator_function_declaration", "function_expression",
              "generator_function", "arrow_function", "method_definition")
_GENERATORS = frozenset({"generator_function_declaration", "generator_function"})

_JS_QUERY = """
(function_declaration) @fn
(generator_function_declaration) @fn
(function_expression) @fn
(generator_function) @fn
(arrow_function) @fn
(method_definition) @fn
(class_declaration) @class
(class) @class
(object) @object
(variable_declarator name: (identifier) @name value: (_) @value)
(assignment_expression left: (_) @name right: (_) @value)
(pair key: (_) @name value: (_) @value)
(field_definition property: (_) @name value: (_) @value)
(assignment_pattern left: (_) @name right: (_) @value)
(object_assignment_pattern left: (_) @name right: (_) @value)
(export_statement value: (_) @default)
(variable_declaration) @var
"""


def _text(data: bytes, node: Any) -> str:
    return data[node.start_byte:node.end_byte].decode("utf-8", "surrogatepass")


_IDENTIFIER = re.compile(r"[A-Za-z_$][\w$]*")


def _declared_names(data: bytes, node: Any) -> set[str]:
    """The names a ``var`` statement declares (every identifier of a destructuring pattern:
    an over-estimate is safe)."""
    names: set[str] = set()
    for child in node.named_children:
        if child.type == "variable_declarator":
            target = child.child_by_field_name("name")
            if target is not None:
                names.update(_IDENTIFIER.findall(_text(data, target)))
    return names


_WRAPPERS = frozenset({"parenthesized_expression", "await_expression", "as_expression", "satisfies_expression",
                       "non_null_expression", "type_assertion"})


def _bound_functions(node: Any) -> list[Any]:
    """The functions a bound value ends in (see ``parse``)."""
    kind = node.type
    if kind in _FUNCTIONS or kind in ("function", "class"):
        return [node] if kind != "class" else []
    if kind in _WRAPPERS:
        inner = [c for c in node.named_children if c.type not in ("type_annotation", "type_arguments", "comment")]
        return _bound_functions(inner[-1] if kind == "type_assertion" else inner[0]) if inner else []
    if kind == "sequence_expression":
        children = [c for c in node.named_children if c.type != "comment"]
        return _bound_functions(children[-1]) if children else []
    if kind == "ternary_expression":
        found = []
        for field in ("consequence", "alternative"):
            child = node.child_by_field_name(field)
            if child is not None:
                found.extend(_bound_functions(child))
        return found
    if kind == "call_expression":
        callee = node.child_by_field_name("function")
        if callee is not None and callee.type in ("parenthesized_expression", "function_expression", "function"):
            inner = _bound_functions(callee)
            if inner:
                return inner  # an IIFE
        arguments = node.child_by_field_name("arguments")
        candidates = [c for c in (arguments.named_children if arguments is not None else ())
                      if c.type in _FUNCTIONS or c.type == "function"]
        return candidates if len(candidates) == 1 else []
    return []


# Query captures that open a naming scope, and their tags in the scope walk: functions,
# classes, object literals, namespaces.
_SCOPE_TAGS = (("fn", "f"), ("class", "c"), ("object", "o"), ("namespace", "n"))


class JavaScriptLanguage(BraceLanguage):
    name = "javascript"
    runtime_marker = RUNTIME_MARKER
    """The first line of the runtime files this tool writes (left alone by every front door)."""
    extensions, interpreters = BUILTIN["javascript"][2:]  # the registry's table
    markers = MARKERS
    wrappers = (("", ""), ("class _ {\n", "\n}"), ("({\n", "\n})"), ("[\n", "\n]"), ("_(\n", "\n)"),
                ("function _() {\n", "\n}"))
    own_name = re.compile(r"\b_telemetry(?:_s|_e|_a)?\b")
    leftover = _LEFTOVER
    lang_label = "JavaScript"

    def __init__(self) -> None:
        super().__init__()
        self._template = Template(f"{self.name}.span.{VENDORED}", TEMPLATE_VERSION, "span", VENDORED)
        self._lazy = self._make_grammars()

    def _make_grammars(self) -> LazyGrammars:
        def load() -> object:
            import tree_sitter_javascript

            return tree_sitter_javascript.language()

        return LazyGrammars({"javascript": load}, {"javascript": _JS_QUERY})

    def grammars(self) -> Grammars:
        return self._lazy.get()

    def grammar_for(self, path: str | None) -> str:
        return "javascript"

    # -- parsing ---------------------------------------------------------------------------------

    def parse(self, text: str, path: str, settings: Settings) -> ParsedFile:
        early = self._early_skip(text, path)
        if early:
            parsed = ParsedFile(self.name, path, text, split_lines(text), [], 0, None)
            parsed.file_skip_reason = early
            return parsed
        data = text.encode("utf-8", "surrogatepass")
        grammar = self.grammar_for(path)
        ts = self.grammars()
        tree = self.parse_tree(data, path)
        root = tree.root_node
        if root.has_error:
            raise SourceSyntaxError(tree_error(root))
        lines = split_lines(text)
        matches = ts.QueryCursor(ts.queries[grammar]).matches(root)
        context: dict[tuple[int, int], str] = {}
        bindings: list[tuple[Any, str]] = []
        events: list[tuple[int, int, str, Any]] = []
        declared_vars: list[Any] = []
        for _pattern, captures in matches:
            scope = next(((captures[key][0], tag) for key, tag in _SCOPE_TAGS if key in captures), None)
            if "var" in captures:
                declared_vars.append(captures["var"][0])
            elif scope is not None:
                node, tag = scope
                events.append((node.start_byte, node.end_byte, tag, node))
            elif "default" in captures:
                value = captures["default"][0]
                context.setdefault((value.start_byte, value.end_byte), "default")
            elif "value" in captures and "name" in captures:
                value = captures["value"][0]
                name = self._context_name(data, captures["name"][0])
                if name:
                    context.setdefault((value.start_byte, value.end_byte), name)
                    bindings.append((value, name))
        # A function takes the name of the binding it ends up in, through parentheses, await,
        # a conditional, a sequence, a TypeScript assertion, and a call that wraps it
        # (``const h = wrap(async () => ...)``, an IIFE ``var f = (function () {...}())``).
        for value, name in bindings:
            for function in _bound_functions(value):
                context.setdefault((function.start_byte, function.end_byte), name)
        for node in declared_vars:
            events.append((node.start_byte, node.end_byte, "v", node))
        events.sort(key=lambda e: (e[0], -e[1]))
        header_present, header_spec = self._header_present(data, root)
        records: list[tuple[int, FunctionRecord]] = []
        positions: dict[int, _Position] = {}
        # stack items: [end byte, kind, name segment (None: adds nothing to qualnames),
        #               class flag (its constructor must keep super() at the top level),
        #               the var names of a function (None for other scopes)]
        stack: list[list[Any]] = []
        anonymous: dict[str, int] = {}
        found: list[tuple[int, Any, str, str, bool, bool, str | None, set[str]]] = []
        for start, end, kind, node in events:
            while stack and stack[-1][0] <= start:
                stack.pop()
            if kind == "v":
                frame = next((s for s in reversed(stack) if s[1] == "f"), None)
                if frame is not None:
                    frame[4].update(_declared_names(data, node))
                continue
            prefix = ".".join(s[2] for s in stack if s[2])
            if kind == "f":
                name, is_method = self._function_name(data, node, context, stack)
                if name is None:
                    anonymous[prefix] = anonymous.get(prefix, 0) + 1
                    name = f"<anonymous#{anonymous[prefix]}>"
                name = safe_name(name)
                qualname = f"{prefix}.{name}" if prefix else name
                enclosing = next((s for s in reversed(stack) if s[1] == "f"), None)
                root_super = bool(is_method and stack and stack[-1][1] == "c" and stack[-1][3])
                names: set[str] = set()
                found.append((len(stack), node, qualname, name, is_method, root_super,
                              enclosing[2] if enclosing else None, names))
                stack.append([end, "f", name, False, names])
            elif kind == "c":
                name_node = node.child_by_field_name("name")
                segment = _text(data, name_node) if name_node is not None else context.get((start, end))
                stack.append([end, "c", safe_name(segment) if segment else None,
                              self._super_must_be_top_level(data, node), None])
            elif kind == "o":
                segment = context.get((start, end))
                stack.append([end, "o", safe_name(segment) if segment else None, False, None])
            else:
                name_node = node.child_by_field_name("name")
                segment = _text(data, name_node) if name_node is not None else None
                stack.append([end, "n", safe_name(segment.strip("'\"")) if segment else None, False, None])
        # Span names carry the module, as Python's do (module and qualname): the runtime
        # reports them apart (``lodash/_baseGet.js`` and ``baseGet``).
        module = module_name(path) + ":"
        for depth, node, qualname, name, is_method, root_super, nested_in, names in found:
            record, where = self._record(node, module + qualname, name, is_method, root_super, data, lines, path,
                                         settings, module + nested_in if nested_in else None, names)
            records.append((depth, record))
            if where is not None:
                positions[record.start_byte] = where
        # Deeper functions first among those that start on one line: the engine composes the
        # functions of a line in this order, and an inner function's end must come first
        # where both end at one place (``a => b => a + b``).
        records.sort(key=lambda item: (item[1].start_line, -item[0], item[1].start_byte))
        functions = mark_same_line_duplicates([r for _depth, r in records])
        header_row, header_col, module_kind = self._header_position(data, root, lines, path)
        parsed = ParsedFile(self.name, path, text, lines, functions, header_row + 1 if header_row >= 0 else 0,
                            VENDORED if header_present else None)
        parsed.extra.update(positions=positions, header_at=(header_row, header_col), module_kind=module_kind,
                            header_spec=header_spec,
                            clash=not header_present and self._uses_own_names(data, root))
        parsed.file_skip_reason = self._file_skip(parsed, settings)
        return parsed

    def _uses_own_names(self, data: bytes, root: Any) -> bool:
        """Whether the code (not a comment or a string, not this tool's own recognised
        texts) declares or uses a name this tool inserts."""
        if b"_telemetry" not in data:
            return False
        ours = [(m.start, m.end) for m in self.find(data, root)]
        for match in re.finditer(rb"\b_telemetry(?:_s|_e|_a)?\b", data):
            if any(start <= match.start() < end for start, end in ours):
                continue
            node = root.descendant_for_byte_range(match.start(), match.end())
            if node is not None and node.type in _BINDING_TYPES and node.start_byte == match.start():
                return True
        return False

    def file_skip_reason(self, lines: Any, text: str, header_present: str | None, records: Any) -> str | None:
        for line in lines[:30]:
            if SKIP_FILE_COMMENT.search(line):
                return "opted out (// telemetry: skip-file)"
        return None

    @staticmethod
    def _early_skip(text: str, path: str) -> str | None:
        """Files left alone without parsing them."""
        if text.startswith(RUNTIME_MARKER):
            return "the vendored telemetry runtime"
        if ".min." in os.path.basename(path):
            return "minified code"
        return None

    def _file_skip(self, parsed: ParsedFile, settings: Settings) -> str | None:
        if settings.target != VENDORED:
            return (f"{self.lang_label} supports only the vendored target (the runtime written into the project), "
                    f"not {settings.target!r}")
        reason = self.file_skip_reason(parsed.lines, parsed.text, parsed.header_present, parsed.functions)
        if reason is None and parsed.extra.get("clash"):
            # Whatever else is instrumented: a second _telemetry would be declared.
            reason = "the file already uses a name this tool inserts (_telemetry...)"
        return reason

    @staticmethod
    def _context_name(data: bytes, node: Any) -> str | None:
        """The name a value gets from where it is put: a variable, an assignment target, an
        object key or a class field."""
        kind = node.type
        if kind in ("identifier", "property_identifier", "private_property_identifier", "shorthand_property_identifier",
                    "shorthand_property_identifier_pattern"):
            return _text(data, node)
        if kind in ("number",):
            return _text(data, node)
        if kind == "string":
            value = _text(data, node)[1:-1]
            return value if value and "\\" not in value else None
        if kind == "computed_property_name":
            return "[" + _text(data, node)[1:-1].strip() + "]"
        if kind == "member_expression":
            text = _text(data, node)
            if not re.fullmatch(r"[A-Za-z_$][\w$]*(?:\s*\.\s*#?[A-Za-z_$][\w$]*)*", text):
                return None
            parts = [p.strip() for p in text.split(".")]
            if parts[0] == "this":
                parts = parts[1:]
            parts = [p for p in parts if p != "prototype"]
            return ".".join(parts) or None
        return None

    def _function_name(self, data: bytes, node: Any, context: dict[tuple[int, int], str], stack: list[list[Any]]
                       ) -> tuple[str | None, bool]:
        kind = node.type
        if kind == "method_definition":
            name_node = node.child_by_field_name("name")
            name = self._context_name(data, name_node) or _text(data, name_node)
            for child in node.children:
                if child.start_byte >= name_node.start_byte:
                    break
                if child.type in ("get", "set"):
                    name = f"{child.type} {name}"
            return name, True
        name_node = node.child_by_field_name("name")
        if name_node is not None:
            return _text(data, name_node), False
        found = context.get((node.start_byte, node.end_byte))
        return found, False

    def _super_must_be_top_level(self, data: bytes, node: Any) -> bool:
        """Whether the constructor of this class must keep its super() call at the top level
        of its body (TypeScript's rule; JavaScript has none)."""
        return False

    def _body_conflict(self, body: Any, data: bytes, var_names: set[str]) -> str | None:
        """Why the body's statements cannot go inside a block: a function declared directly
        in the body becomes block-scoped there, which is an error when the body also declares
        that name with ``var``, or declares the function twice."""
        seen: set[str] = set()
        for child in body.named_children:
            if child.type in ("function_declaration", "generator_function_declaration"):
                name_node = child.child_by_field_name("name")
                name = _text(data, name_node) if name_node is not None else ""
                if name in seen or name in var_names:
                    return REASON_BLOCK_CONFLICT.format(name)
                seen.add(name)
        return None

    def _record(self, node: Any, qualname: str, name: str, is_method: bool, root_super: bool, data: bytes,
                lines: list[str], path: str, settings: Settings, nested_in: str | None,
                var_names: set[str]) -> tuple[FunctionRecord, _Position | None]:
        body = node.child_by_field_name("body")
        start_row, end_row = node.start_point.row, node.end_point.row
        body_row, body_end_row = body.start_point.row, body.end_point.row
        flags = set()
        for child in node.children:
            if child.type in ("formal_parameters", "statement_block", "identifier", "property_identifier"):
                break
            flags.add(child.type)
        is_async = "async" in flags
        is_generator = node.type in _GENERATORS or "*" in flags
        source = "".join(lines[start_row:end_row + 1])
        reason = None
        span_name = None
        where: _Position | None = None
        if body.type == "statement_block":
            directives, first = self._directives(body)
            after_brace = body.start_byte + 1
            span_name = self._span_at(data, after_brace, lead=True)
            if span_name is None and directives and first is not None:
                span_name = self._span_at(data, first.start_byte, lead=False)
            if span_name is not None:
                reason = REASON_INSTRUMENTED
            elif first is None:
                if settings.skip_trivial:
                    reason = REASON_DIRECTIVE_ONLY if directives else REASON_TRIVIAL
                elif directives:
                    reason = REASON_DIRECTIVE_ONLY
            if reason is None or not settings.skip_trivial:
                if directives and first is not None:
                    open_row, open_byte, form = first.start_point.row, first.start_point.column, "before"
                else:
                    open_row, open_byte, form = body_row, body.start_point.column + 1, "after"
                brace = last_token(body)
                close_row, close_byte = brace.start_point.row, brace.start_point.column
                where = ("block", open_row, char_column(lines[open_row], open_byte), close_row,
                         char_column(lines[close_row], close_byte), form)
        else:
            if body.type in _TRIVIAL_EXPRESSIONS and settings.skip_trivial:
                reason = REASON_TRIVIAL_EXPR
            last = last_token(body)
            where = ("expr", body_row, char_column(lines[body_row], body.start_point.column), last.end_point.row,
                     char_column(lines[last.end_point.row], last.end_point.column), "")
        if reason is None and root_super and name == "constructor":
            reason = REASON_DERIVED_CONSTRUCTOR
        if reason is None and body.type == "statement_block":
            reason = self._body_conflict(body, data, var_names)
        if reason is None and self.opted_out(lines, start_row, body_row):
            reason = REASON_OPT_OUT
        record = FunctionRecord(
            language=self.name, path=path, qualname=qualname, name=name,
            start_line=start_row + 1, end_line=end_row + 1, def_line=start_row + 1,
            start_byte=node.start_byte, end_byte=node.end_byte,
            body_start_line=body_row + 1, body_end_line=body_end_row + 1,
            body_start_byte=body.start_byte, body_end_byte=body.end_byte,
            anchor_line=(where[1] + 1) if where else 0, indent=leading_ws(lines[start_row]), body_indent="",
            sha256=hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest(),
            is_async=is_async, is_generator=is_generator, is_method=is_method,
            instrumented=span_name is not None, one_line=body_row == start_row,
            skip_reason=reason, nested_in=nested_in, span_name=span_name,
        )
        return record, where

    @staticmethod
    def _directives(body: Any) -> tuple[int, Any]:
        """(number of leading directives, the first other statement) of a block."""
        count = 0
        for child in body.named_children:
            if child.type == "comment" or child.type == "html_comment":
                continue
            if child.type == "expression_statement" and child.named_child_count == 1 and \
                    child.named_children[0].type == "string":
                count += 1
                continue
            return count, child
        return count, None

    @staticmethod
    def _span_at(data: bytes, position: int, *, lead: bool) -> str | None:
        prefix = (b" " if lead else b"") + b'const _telemetry_s = _telemetry.span("'
        if not data.startswith(prefix, position):
            prefix = b' const _telemetry_a = _telemetry.span("'
            if not lead or not data.startswith(prefix, position):
                return None
        begin = position + len(prefix)
        close = data.find(b'"', begin)
        if close < 0:
            return None
        return data[begin:close].decode("utf-8", "surrogatepass")

    def _header_present(self, data: bytes, root: Any) -> tuple[bool, str | None]:
        if b"_telemetry" not in data:
            return False, None
        for match in self.find(data, root):
            if match.kind == "header":
                return True, match.name
        return False, None

    def _header_position(self, data: bytes, root: Any, lines: list[str], path: str) -> tuple[int, int, str]:
        """(row, column) of the first statement after the directives (-1: none), and the
        file's module kind by its syntax (``module``, ``commonjs`` or ``""``: unknown)."""
        row, column = -1, 0
        esm = False
        seen_code = False
        for child in root.named_children:
            kind = child.type
            if kind in ("import_statement", "export_statement"):
                esm = True
            if kind in ("hash_bang_line", "comment", "html_comment"):
                continue
            if not seen_code and kind == "expression_statement" and child.named_child_count == 1 and \
                    child.named_children[0].type == "string":
                continue  # a directive
            if not seen_code:
                seen_code = True
                row = child.start_point.row
                column = char_column(lines[row], child.start_point.column)
        # Only import/export declarations tell: a `require(` in a comment or a string says
        # nothing, and an ES module may well call a require() it made (createRequire).
        return row, column, "module" if esm else ""

    # -- checks ----------------------------------------------------------------------------------

    def validate_output(self, parsed: ParsedFile, text: str, new_rows: Any) -> str | None:
        """The grammar's checks (``BraceLanguage.validate_output``), then the toolchain's
        where it is installed: Node.js compiles the file as it will load it and the runtime
        import is of that module system (``toolcheck``)."""
        problem = super().validate_output(parsed, text, new_rows)
        if problem is not None:
            return problem
        return self.toolchain_check(parsed, text)

    def toolchain_check(self, parsed: ParsedFile, text: str) -> str | None:
        from . import toolcheck

        header = "import" if "import * as _telemetry from " in text else \
            "require" if "const _telemetry = require(" in text else ""
        return toolcheck.check_javascript(parsed.path, parsed.text, text, header)

    # -- templates -------------------------------------------------------------------------------

    def templates(self, record: FunctionRecord, settings: Settings) -> list[Template]:
        return [self._template]

    def plan(self, template: Template, record: FunctionRecord, parsed: ParsedFile) -> list[Edit]:
        where = parsed.extra.get("positions", {}).get(record.start_byte)
        if where is None:
            raise TemplateNotApplicable("no place for the span in this function")
        kind, open_row, open_col, close_row, close_col, form = where
        rel = record.relative
        name = record.qualname
        if kind == "block":
            opening = OPEN.format(name=name)
            opening = " " + opening if form == "after" else opening + " "
            return [insert_text(rel(open_row + 1), open_col, opening), insert_text(rel(close_row + 1), close_col, CLOSE)]
        return [insert_text(rel(open_row + 1), open_col, EXPR_OPEN.format(name=name)),
                insert_text(rel(close_row + 1), close_col, EXPR_CLOSE)]

    # -- header ----------------------------------------------------------------------------------

    def module_kind(self, parsed: ParsedFile, hint: str) -> str:
        """``module`` (ES module) or ``commonjs`` for this file: by extension, then its
        import/export declarations, then the ``type`` the nearest package.json states
        (``hint``), else CommonJS (Node's default)."""
        ext = os.path.splitext(parsed.path)[1].lower()
        if ext == ".mjs":
            return "module"
        if ext == ".cjs":
            return "commonjs"
        return parsed.extra.get("module_kind") or hint or "commonjs"

    def header(self, parsed: ParsedFile, settings: Settings, import_name: str) -> list[Any]:
        if parsed.header_present == settings.target:
            return []
        row, column = parsed.extra.get("header_at", (-1, 0))
        if row < 0:
            return []
        hint, specifier = split_import_name(import_name)
        kind = self.module_kind(parsed, hint)
        return [insert_text(row + 1, column, self.header_text(kind, specifier, parsed))]

    def header_text(self, kind: str, specifier: str, parsed: ParsedFile) -> str:
        if kind == "module":
            return HEADER_IMPORT.format(spec=specifier + ".mjs")
        return HEADER_REQUIRE.format(spec=specifier + ".cjs")

    # -- the vendored runtime ---------------------------------------------------------------------

    def vendored_runtime(self, path: Path, root: Path, settings: Settings) -> RuntimeFiles:
        """Where the runtime goes for ``path`` (a file under the scan root ``root``): beside
        the nearest package.json at or below the root, else in the root; the file imports it
        by a relative specifier; the module kind of the package (its ``type``) goes along."""
        specifier, where, kind = _runtime_place(str(path.parent), str(root))
        files = tuple((Path(where) / name, runtime_source(name)) for name in RUNTIME_FILES)
        # The module name is part of every span name: it goes into the import name, which
        # is part of the memo's key.
        name = f"{kind}:{specifier}" if kind else specifier
        # Kept last, the specifier is what the pre-commit hook looks for in the file.
        return RuntimeFiles(f"module={module_name(str(path))}:{name}", files)

    def is_runtime_file(self, path: str | os.PathLike[str]) -> bool:
        try:
            with open(path, "rb") as handle:
                return handle.read(len(RUNTIME_MARKER)) == RUNTIME_MARKER.encode()
        except OSError:
            return False


def split_import_name(import_name: str) -> tuple[str, str]:
    """(module kind hint, specifier without extension) from the engine's import name:
    ``module:../telemetry_utils``; a bare name means ``./name``."""
    if import_name.startswith("module="):  # the file's module name (a part of the memo's key)
        import_name = import_name.partition(":")[2]
    hint = ""
    if ":" in import_name:
        hint, _, import_name = import_name.partition(":")
    if not import_name or import_name in ("telemetry_utils",) or not import_name.startswith("."):
        import_name = "./" + (import_name.replace(".", "/") if import_name else RUNTIME_STEM)
    return hint, import_name


@functools.lru_cache(maxsize=4096)
def _runtime_place(folder_name: str, root_name: str) -> tuple[str, str, str]:
    """(specifier, runtime folder relative to the root, module kind) for the files of one
    folder: the same for all of them, so worked out once per folder and process (a run
    takes package.json files as they are when it starts)."""
    folder, root = Path(folder_name), Path(root_name)
    home = root
    probe = folder
    root_resolved = root.resolve()
    while True:
        if (probe / "package.json").is_file():
            home = probe
            break
        if probe.resolve() == root_resolved or probe.parent == probe:
            break
        probe = probe.parent
    relative = os.path.relpath(home, folder).replace(os.sep, "/")
    specifier = "./" + RUNTIME_STEM if relative == "." else f"{relative}/{RUNTIME_STEM}"
    try:
        where = str(home.resolve().relative_to(root_resolved))
    except ValueError:
        where = "."
    return specifier, where, package_type(folder)


def package_type(folder: Path) -> str:
    """The ``type`` the nearest package.json states (``module`` or ``commonjs``; '' when
    there is none or it says nothing: Node's default, CommonJS, or the file's syntax)."""
    probe = folder.resolve()
    while True:
        candidate = probe / "package.json"
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return ""
            value = data.get("type") if isinstance(data, dict) else None
            return value if value in ("module", "commonjs") else ""
        if probe.parent == probe:
            return ""
        probe = probe.parent


_HOME_MARKERS = (".git", "tsconfig.json", "jsconfig.json", "deno.json")


@functools.lru_cache(maxsize=4096)
def _module_home(folder: str) -> tuple[str, str]:
    """(the folder module names are relative to, the package's name) for the files of
    ``folder``: the nearest package.json's folder and ``name``, else the nearest project
    root (.git, tsconfig.json...)."""
    probe = Path(folder)
    while True:
        manifest = probe / "package.json"
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None
            name = data.get("name") if isinstance(data, dict) else None
            return str(probe), name if isinstance(name, str) and name else probe.name
        if any((probe / marker).exists() for marker in _HOME_MARKERS):
            return str(probe), ""
        if probe.parent == probe:
            return "", ""
        probe = probe.parent


def module_name(path: str) -> str:
    """The module part of a file's span names: ``<package name>/<path in the package>``
    (``lodash/_baseGet.js``, ``express/lib/router/index.js``); without a package, the path
    from the project's root, else the file name."""
    absolute = os.path.abspath(path)
    home, package = _module_home(os.path.dirname(absolute))
    relative = os.path.relpath(absolute, home) if home else os.path.basename(absolute)
    relative = relative.replace(os.sep, "/")
    return safe_name(f"{package}/{relative}" if package else relative).replace(":", "_")


_RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime" / "js"
_RUNTIME_CACHE: dict[str, bytes] = {}


def runtime_source(name: str) -> bytes:
    found = _RUNTIME_CACHE.get(name)
    if found is None:
        found = _RUNTIME_CACHE[name] = (_RUNTIME_DIR / name).read_bytes()
    return found
