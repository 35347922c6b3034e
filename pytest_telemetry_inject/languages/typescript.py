"""TypeScript: the JavaScript language with the TypeScript and TSX grammars.

The inserted code is JavaScript's (see ``javascript.py``); it type-checks as it is (the
caught value is ``unknown``, the span's type comes from the runtime's declarations). The
runtime import is ``import * as _telemetry from "./telemetry_utils.cjs"; `` (typed by
``telemetry_utils.d.cts``, which every ``module``/``moduleResolution`` setting finds), or
``import _telemetry = require("./telemetry_utils.cjs"); `` in ``.cts`` files and files that
already use ``import x = require(...)`` / ``export =``.

Variance annotations (``interface Box<out T>``), which the tree-sitter grammar does not
know, are read past (``parse_tree``). Left alone: overload signatures, abstract and ambient declarations (they have no body),
constructors of derived classes (TypeScript wants their ``super()`` call at the top level
of the body), and script files (no ``import``/``export``: an import would turn a script's
global declarations into a module's).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..scriptlib import split_lines
from . import BUILTIN
from .base import ParsedFile
from .brace import LazyGrammars
from .javascript import HEADER_IMPORT, HEADER_IMPORT_REQUIRE, RUNTIME_MARKER, JavaScriptLanguage

if TYPE_CHECKING:
    from ..settings import Settings

_TS_QUERY = """
(function_declaration) @fn
(generator_function_declaration) @fn
(function_expression) @fn
(generator_function) @fn
(arrow_function) @fn
(method_definition) @fn
(class_declaration) @class
(abstract_class_declaration) @class
(class) @class
(object) @object
(internal_module) @namespace
(module) @namespace
(variable_declarator name: (identifier) @name value: (_) @value)
(assignment_expression left: (_) @name right: (_) @value)
(pair key: (_) @name value: (_) @value)
(public_field_definition name: (_) @name value: (_) @value)
(assignment_pattern left: (_) @name right: (_) @value)
(object_assignment_pattern left: (_) @name right: (_) @value)
(required_parameter pattern: (_) @name value: (_) @value)
(optional_parameter pattern: (_) @name value: (_) @value)
(export_statement value: (_) @default)
"""
REASON_NESTED_DECLARATION = ("a function declared directly in its body (inside the added try block, TypeScript "
                             "refuses it when targeting ES5)")
# A variance annotation: in, out or "in out" before a type parameter's name, after "<" or ",".
_VARIANCE = re.compile(rb"(?<=[<,])(\s*)(in\s+out|in|out)(\s+)(?=[A-Za-z_$][\w$]*\s*(?:[,>=]|extends\b))")
_REQUIRE_STYLE = re.compile(r"^\s*(?:export\s+)?import\s+[\w$]+\s*=\s*require\s*\(|^\s*export\s*=", re.M)


class TypeScriptLanguage(JavaScriptLanguage):
    name = "typescript"
    extensions, interpreters = BUILTIN["typescript"][2:]  # the registry's table
    lang_label = "TypeScript"

    def _make_grammars(self) -> LazyGrammars:
        def typescript() -> object:
            import tree_sitter_typescript

            return tree_sitter_typescript.language_typescript()

        def tsx() -> object:
            import tree_sitter_typescript

            return tree_sitter_typescript.language_tsx()

        return LazyGrammars({"typescript": typescript, "tsx": tsx}, {"typescript": _TS_QUERY, "tsx": _TS_QUERY})

    def grammar_for(self, path: str | None) -> str:
        if path is not None and path.lower().endswith(".tsx"):
            return "tsx"
        return "typescript"

    def alternative_grammars(self) -> tuple[str, ...]:
        return ("typescript", "tsx")

    def parse_tree(self, data: bytes, path: str | None) -> Any:
        """The tree of ``data``; where tree-sitter-typescript fails on variance annotations
        of type parameters (``interface Box<out T>``, ``<in T>``, ``<in out T>``: TypeScript
        4.7, which the grammar's newest wheel does not know), the tree of the same bytes
        with those words blanked out (same length: every position holds), if that one is
        clean. The text itself is never changed; the TypeScript compiler's own parser checks
        every output where it is installed (``toolcheck``)."""
        tree = super().parse_tree(data, path)
        if not tree.root_node.has_error or not _VARIANCE.search(data):
            return tree
        masked = _VARIANCE.sub(lambda m: m.group(1) + b" " * len(m.group(2)) + m.group(3), data)
        other = super().parse_tree(masked, path)
        return other if not other.root_node.has_error else tree

    def parse(self, text: str, path: str, settings: Settings) -> ParsedFile:
        if path.lower().endswith((".d.ts", ".d.mts", ".d.cts")) and not text.startswith(RUNTIME_MARKER):
            # A declaration file has no function bodies: nothing to do, nothing to parse.
            return ParsedFile(self.name, path, text, split_lines(text), [], 0, None)
        return super().parse(text, path, settings)

    def _file_skip(self, parsed: ParsedFile, settings: Settings) -> str | None:
        reason = super()._file_skip(parsed, settings)
        if reason:
            return reason
        lower = parsed.path.lower()
        if parsed.header_present is None and parsed.extra.get("module_kind") != "module" \
                and not lower.endswith((".mts", ".cts")) \
                and any(r.skip_reason is None for r in parsed.functions):
            return "a TypeScript script (no import or export): an import would make it a module"
        return None

    def _super_must_be_top_level(self, data: bytes, node: Any) -> bool:
        """A derived class with initialized properties, parameter properties or private
        names: TypeScript wants its constructor's super() call at the body's top level."""
        derived = False
        body = None
        for child in node.children:
            if child.type == "class_heritage":
                derived = any(c.type == "extends_clause" for c in child.children)
            elif child.type == "class_body":
                body = child
        if not derived or body is None:
            return False
        for member in body.named_children:
            name = member.child_by_field_name("name")
            if name is not None and name.type == "private_property_identifier":
                return True
            if member.type == "public_field_definition" and member.child_by_field_name("value") is not None:
                return True
            if member.type == "method_definition" and name is not None and \
                    data[name.start_byte:name.end_byte] == b"constructor":
                parameters = member.child_by_field_name("parameters")
                for parameter in parameters.named_children if parameters is not None else ():
                    if any(c.type in ("accessibility_modifier", "readonly", "override_modifier")
                           for c in parameter.children):
                        return True
        return False

    def _body_conflict(self, body: Any, data: bytes, var_names: set[str]) -> str | None:
        # Targeting ES5, TypeScript refuses a function declaration inside a block in strict
        # code (TS1252); the target is the project's choice, so such bodies are left alone.
        for child in body.named_children:
            if child.type in ("function_declaration", "generator_function_declaration"):
                return REASON_NESTED_DECLARATION
        return super()._body_conflict(body, data, var_names)

    def header_text(self, kind: str, specifier: str, parsed: ParsedFile) -> str:
        if parsed.path.lower().endswith(".cts") or _REQUIRE_STYLE.search(parsed.text):
            return HEADER_IMPORT_REQUIRE.format(spec=specifier + ".cjs")
        return HEADER_IMPORT.format(spec=specifier + ".cjs")

    def module_kind(self, parsed: ParsedFile, hint: str) -> str:
        return "module"

    def toolchain_check(self, parsed: ParsedFile, text: str) -> str | None:
        """The TypeScript compiler's own parser, where it is installed (``toolcheck``)."""
        from . import toolcheck

        return toolcheck.check_typescript(parsed.path, parsed.text, text)
