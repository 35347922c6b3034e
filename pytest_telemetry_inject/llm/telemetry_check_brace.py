"""The telemetry grammar of JavaScript, TypeScript (and TSX) and Go lines a model inserts.

Each inserted line is found in tree-sitter's parse of the whole output (the grammar wheels
are dependencies of the package, so the parser that checks is the real one) and must be
exactly one statement, alone on its line, followed by the marker comment, as a child of a
statement list inside a function. Its tokens (tree-sitter's leaves; a string literal is one
token, a template literal's fields are checked as expressions) must then follow the
language's grammar, and every node's children are matched exactly, so an extra token (an
optional chain ``?.``, a comment, a spread) is refused.

JavaScript, TypeScript, TSX::

    line   := ("const" | "let") NAME "=" CLOCK ";"
            | "console" "." ("log" | "debug" | "info") "(" [ARG ("," ARG)*] ")" ";"
    CLOCK  := "Date" "." "now" "(" ")" | "performance" "." "now" "(" ")"
    ARG    := STRING | TEMPLATE | NUM
    NUM    := NUMBER | CLOCK | BOUND | NUM ("+" | "-" | "*" | "/") NUM | "(" NUM ")"
            | "(" NUM ")" "." "toFixed" "(" DIGITS ")" | BOUND "." "toFixed" "(" DIGITS ")"
    TEMPLATE := "`" (text | "${" NUM "}")* "`"

Go::

    line   := NAME ":=" "time" "." "Now" "(" ")"
            | ["defer"] LOG | "defer" "func" "(" ")" "{" LOG "}" "(" ")"
            | "import" "\"time\"" | "import" "\"log\"" | "\"time\"" | "\"log\""   (in an import block)
    LOG    := "log" "." ("Printf" | "Println" | "Print") "(" STRING ("," GARG)* ")"
    GARG   := STRING | NUMBER | BOUND | SINCE | SINCE "." ("Seconds" | "Milliseconds" | "Microseconds") "(" ")"
    SINCE  := "time" "." "Since" "(" BOUND ")"

A NAME bound by an inserted line must occur nowhere in the original file and is bound once
per function; BOUND is such a name bound earlier in the same function, in a block that holds
the reader (JavaScript's ``const`` and Go's ``:=`` are block-scoped). The globals used
(``console``, ``Date``, ``performance``; Go's ``time`` and ``log`` packages) must not be
shadowed anywhere in the original. Go: a package is used only if the file imports it (or an
inserted line does, and then one inserted line must use it: Go refuses unused imports), the
original must not import it already, and every bound name must be read (Go refuses unused
variables). Nothing goes at the top level of a JavaScript file.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..scriptlib import split_lines
from .extensions import language_of
from .inserted import InsertedRow, snippet

_GRAMMAR_FILE = {"javascript": "x.js", "typescript": "x.ts", "tsx": "x.tsx", "go": "x.go"}
_JS_FUNCTIONS = frozenset({"function_declaration", "function_expression", "function", "arrow_function",
                           "method_definition", "generator_function_declaration", "generator_function"})
_GO_FUNCTIONS = frozenset({"function_declaration", "method_declaration", "func_literal"})
_JS_CONTAINERS = frozenset({"statement_block", "switch_case", "switch_default"})
_GO_CONTAINERS = frozenset({"statement_list", "block"})
_JS_GLOBALS = frozenset({"console", "Date", "performance"})
_GO_PACKAGES = frozenset({"time", "log"})
JS_HINT = ("allowed: `const NAME = Date.now();` or `performance.now()`, `console.log/debug/info(...)` of strings, "
           "template literals and numbers, each line ending with `// telemetry-inject`")
GO_HINT = ('allowed: `start := time.Now()`, `defer log.Printf("...", time.Since(start))`, '
           '`defer func() { log.Printf("...", time.Since(start)) }()`, `log.Printf` with a constant format, '
           'an import of "time" or "log"; each line ending with `// telemetry-inject`')


class Refused(Exception):
    pass


def check_brace(original: str, output: str, rows: list[InsertedRow], *, language: str,
                function_names: Collection[str] | None, marker: str) -> str | None:
    info = language_of(_GRAMMAR_FILE[language])
    assert info is not None
    if importlib.util.find_spec(info.grammar) is None:
        return (f"model insertions into {language} files are checked with tree-sitter, and its grammar is not "
                f"installed (pip install {info.grammar.replace('_', '-')})")
    import tree_sitter

    module = importlib.import_module(info.grammar)
    parser = tree_sitter.Parser(tree_sitter.Language(getattr(module, info.grammar_function)()))
    before = parser.parse(original.encode("utf-8", "surrogatepass")).root_node
    after = parser.parse(output.encode("utf-8", "surrogatepass")).root_node
    if before.has_error:
        return f"the original file does not parse as {language}: model insertions into it are refused"
    if after.has_error:
        return "the output does not parse (tree-sitter found an error)"
    check = (_Go if language == "go" else _JavaScript)(before, after, function_names, marker)
    lines = split_lines(output)
    for row in rows:
        text = lines[row.output].rstrip("\r\n")
        try:
            check.line(row.output, text)
        except Refused as exc:
            hint = GO_HINT if language == "go" else JS_HINT
            return f"inserted line {row.output + 1} is not telemetry ({exc}): {snippet(text)}; {hint}"
    try:
        check.finish()
    except Refused as exc:
        return str(exc)
    return None


@dataclass
class _Binding:
    name: str
    row: int
    function: Any
    block: Any
    read: bool = False


@dataclass
class _Base:
    before: Any
    after: Any
    function_names: Collection[str] | None
    marker: str
    bindings: list[_Binding] = field(default_factory=list)
    identifiers: set[str] = field(default_factory=set)

    FUNCTIONS: ClassVar[frozenset[str]] = frozenset()
    CONTAINERS: ClassVar[frozenset[str]] = frozenset()
    TERMINATOR: ClassVar[bytes] = b""

    def __post_init__(self) -> None:
        self.identifiers = {n.text.decode("utf-8", "replace") for n in _leaves(self.before) if "identifier" in n.type}

    # -- where the line is -----------------------------------------------------------------------

    def line(self, row: int, text: str) -> None:
        raw = text.encode("utf-8", "surrogatepass")
        indent = len(raw) - len(raw.lstrip(b" \t"))
        node = self.after.named_descendant_for_point_range((row, indent), (row, indent))
        while node.parent is not None and node.parent.start_point == (row, indent) and node.parent.end_point[0] == row:
            node = node.parent
        if node.start_point != (row, indent) or node.end_point[0] != row:
            raise Refused("it is not a statement of its own in the file (inside a string or an expression?)")
        head = raw[:raw.rfind(b"//")] if b"//" in raw else raw
        if self.TERMINATOR and not head.rstrip().endswith(self.TERMINATOR):
            raise Refused(f"end the statement with {self.TERMINATOR.decode()!r}")
        comment = node.next_sibling
        rest = raw[node.end_point[1]:]
        expected = b"// " + self.marker.encode()
        if (comment is None or comment.type != "comment" or comment.start_point[0] != row
                or comment.text.rstrip(b"\r") != expected or rest.strip() != expected):
            raise Refused(f"the statement must be followed by `// {self.marker}` and nothing else")
        parent = node.parent
        if parent is None or parent.type not in self.CONTAINERS and not self._top_level(node):
            raise Refused("it is not a statement of a function's body")
        self.statement(node, row)

    def _top_level(self, node: Any) -> bool:
        return False

    def function_of(self, node: Any) -> Any:
        parent = node.parent
        while parent is not None and parent.type not in self.FUNCTIONS:
            parent = parent.parent
        return parent

    def in_function(self, node: Any) -> Any:
        function = self.function_of(node)
        if function is None:
            raise Refused("telemetry goes inside a function")
        if self.function_names is not None:
            names = set()
            walker = function
            while walker is not None:
                if walker.type in self.FUNCTIONS:
                    name = walker.child_by_field_name("name")
                    names.add(name.text.decode("utf-8", "replace") if name is not None else "<anonymous>")
                walker = walker.parent
            if not names & set(self.function_names):
                raise Refused("it is not inside one of the functions to instrument")
        return function

    # -- names -------------------------------------------------------------------------------------

    def bind(self, name_node: Any, statement: Any, row: int) -> None:
        name = _text(name_node)
        if name in self.identifiers:
            raise Refused(f"the name {name!r} is already used by the file; bind a new name")
        function = self.function_of(statement)
        if any(b.name == name and b.function == function for b in self.bindings):
            raise Refused(f"the name {name!r} is bound twice in the same function")
        self.bindings.append(_Binding(name, row, function, statement.parent))

    def bound(self, node: Any, statement: Any, row: int) -> None:
        name = _text(node)
        function = self.function_of(statement)
        for binding in self.bindings:
            if (binding.name == name and binding.row < row and binding.function == function
                    and binding.block.start_byte <= statement.start_byte < binding.block.end_byte):
                binding.read = True
                return
        raise Refused(f"{name!r} is not bound by an earlier inserted line in the same block")

    def global_name(self, node: Any, allowed: frozenset[str]) -> str:
        name = _text(node)
        if node.type != "identifier" or name not in allowed:
            raise Refused(f"{name!r} is not allowed here")
        if self.shadowed(name):
            raise Refused(f"the file declares its own {name!r}")
        return name

    def shadowed(self, name: str) -> bool:
        return False

    def statement(self, node: Any, row: int) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass


class _JavaScript(_Base):
    FUNCTIONS = _JS_FUNCTIONS
    CONTAINERS = _JS_CONTAINERS
    TERMINATOR = b";"  # no line may lean on automatic semicolon insertion

    def shadowed(self, name: str) -> bool:
        """Is ``name`` anything in the original but the object of ``name.x`` or ``new name``?"""
        for leaf in _leaves(self.before):
            if "identifier" not in leaf.type or _text(leaf) != name or leaf.type == "property_identifier":
                continue
            parent = leaf.parent
            if parent is not None and parent.type == "member_expression" and parent.child_by_field_name("object") == leaf:
                continue
            if parent is not None and parent.type == "new_expression" and parent.child_by_field_name("constructor") == leaf:
                continue
            if leaf.type == "type_identifier" and parent is not None and parent.type in ("type_annotation", "generic_type"):
                continue
            return True
        return False

    def statement(self, node: Any, row: int) -> None:
        self.in_function(node)
        if node.type == "lexical_declaration":
            keyword, declarator, semicolon = _children(node, 3)
            if keyword.type not in ("const", "let") or declarator.type != "variable_declarator" or semicolon.type != ";":
                raise Refused("declare one name with const or let, ending with ';'")
            name, equals, value = _children(declarator, 3)
            if name.type != "identifier" or equals.type != "=":
                raise Refused("declare one plain name")
            self.clock(value)
            self.bind(name, node, row)
            return
        if node.type == "expression_statement":
            call, semicolon = _children(node, 2)
            if semicolon.type != ";" or call.type != "call_expression":
                raise Refused("a console call ending with ';'")
            function, arguments = _children(call, 2)
            obj, method = self.member(function)
            self.global_name(obj, frozenset({"console"}))
            if _text(method) not in ("log", "debug", "info"):
                raise Refused(f"console.{_text(method)} is not allowed")
            for argument in _arguments(arguments):
                self.argument(argument, node, row)
            return
        raise Refused(f"a {node.type} is not allowed")

    def member(self, node: Any) -> tuple[Any, Any]:
        if node.type != "member_expression":
            raise Refused(f"{_text(node)[:40]!r} is not allowed")
        obj, dot, prop = _children(node, 3)
        if dot.type != "." or prop.type != "property_identifier":
            raise Refused("plain member access only")
        return obj, prop

    def clock(self, node: Any) -> None:
        if node.type != "call_expression":
            raise Refused("the value is Date.now() or performance.now()")
        function, arguments = _children(node, 2)
        obj, prop = self.member(function)
        self.global_name(obj, frozenset({"Date", "performance"}))
        if _text(prop) != "now" or _arguments(arguments):
            raise Refused("the value is Date.now() or performance.now()")

    def argument(self, node: Any, statement: Any, row: int) -> None:
        if node.type == "string":
            if any(child.type not in ('"', "'", "string_fragment", "escape_sequence") for child in node.children):
                raise Refused("a plain string")
            return
        if node.type == "template_string":
            for child in node.children:
                if child.type == "template_substitution":
                    opening, inner, closing = _children(child, 3)
                    self.number(inner, statement, row)
                elif child.type not in ("`", "string_fragment", "escape_sequence"):
                    raise Refused(f"a {child.type} inside a template literal")
            return
        self.number(node, statement, row)

    def number(self, node: Any, statement: Any, row: int) -> None:
        kind = node.type
        if kind == "number":
            return
        if kind == "identifier":
            self.bound(node, statement, row)
            return
        if kind == "call_expression":
            function, arguments = _children(node, 2)
            if function.type == "member_expression" and _text(function.child_by_field_name("property")) == "toFixed":
                target, _prop = self.member(function)
                values = _arguments(arguments)
                if len(values) != 1 or values[0].type != "number" or not _text(values[0]).isdigit() \
                        or int(_text(values[0])) > 20:
                    raise Refused("toFixed takes one whole number from 0 to 20")
                if target.type not in ("parenthesized_expression", "identifier"):
                    raise Refused("toFixed applies to a name or a parenthesised expression")
                self.number(target, statement, row)
                return
            self.clock(node)
            return
        if kind == "binary_expression":
            left, operator, right = _children(node, 3)
            if operator.type not in ("+", "-", "*", "/"):
                raise Refused(f"the operator {operator.type} is not allowed")
            self.number(left, statement, row)
            self.number(right, statement, row)
            return
        if kind == "parenthesized_expression":
            opening, inner, closing = _children(node, 3)
            self.number(inner, statement, row)
            return
        raise Refused(f"a {kind} is not allowed")


class _Go(_Base):
    FUNCTIONS = _GO_FUNCTIONS
    CONTAINERS = _GO_CONTAINERS

    def __post_init__(self) -> None:
        super().__post_init__()
        self.imports = _go_imports(self.before)
        self.inserted_imports: dict[str, bool] = {}  # package -> used by an inserted line

    def _top_level(self, node: Any) -> bool:
        return node.type == "import_spec" and node.parent is not None and node.parent.type == "import_spec_list" \
            or node.type == "import_declaration" and node.parent is not None and node.parent.type == "source_file"

    def shadowed(self, name: str) -> bool:
        """Does ``name`` in the original mean anything but the standard package?"""
        for alias, path in self.imports:
            if alias == name or (alias is None and path != name and path.rsplit("/", 1)[-1] == name):
                return True
        for leaf in _leaves(self.before):
            if leaf.type == "identifier" and _text(leaf) == name:
                parent = leaf.parent
                if not (parent is not None and parent.type == "selector_expression"
                        and parent.child_by_field_name("operand") == leaf):
                    return True
        return False

    def package(self, node: Any) -> None:
        name = self.global_name(node, _GO_PACKAGES)
        if (None, name) in self.imports:
            return
        if name in self.inserted_imports:
            self.inserted_imports[name] = True
            return
        raise Refused(f'the file does not import "{name}": insert the import line first')

    def statement(self, node: Any, row: int) -> None:
        if node.type in ("import_spec", "import_declaration"):
            self.import_line(node)
            return
        self.in_function(node)
        if node.type == "short_var_declaration":
            names, operator, values = _children(node, 3)
            (name,) = _children(names, 1)
            (value,) = _children(values, 1)
            if operator.type != ":=" or name.type != "identifier":
                raise Refused("bind one plain name with :=")
            self.call(value, "time", ("Now",))
            self.bind(name, node, row)
            return
        if node.type == "defer_statement":
            keyword, call = _children(node, 2)
            function = call.child_by_field_name("function")
            if function is not None and function.type == "func_literal":
                literal, arguments = _children(call, 2)
                if _arguments(arguments):
                    raise Refused("the deferred func() takes no arguments")
                self.closure(literal, node, row)
                return
            self.log(call, node, row)
            return
        if node.type == "expression_statement":
            (call,) = _children(node, 1)
            self.log(call, node, row)
            return
        raise Refused(f"a {node.type} is not allowed")

    def import_line(self, node: Any) -> None:
        spec = node
        if node.type == "import_declaration":
            keyword, spec = _children(node, 2)
            if spec.type != "import_spec":
                raise Refused("import one package")
        (path,) = _children(spec, 1)
        package = _text(path).strip('"`')
        if path.type not in ("interpreted_string_literal", "raw_string_literal") or package not in _GO_PACKAGES:
            raise Refused(f'only "time" and "log" may be imported, not {_text(path)}')
        if any(p == package for _alias, p in self.imports) or package in self.inserted_imports:
            raise Refused(f'the file already imports "{package}"')
        self.inserted_imports[package] = False

    def closure(self, literal: Any, statement: Any, row: int) -> None:
        keyword, parameters, block = _children(literal, 3)
        if _arguments(parameters):
            raise Refused("the deferred func() takes no parameters")
        inner = _children(block, 3)[1]
        if inner.type == "statement_list":
            (inner,) = _children(inner, 1)
        if inner.type != "expression_statement":
            raise Refused("the deferred func() holds one log call")
        (call,) = _children(inner, 1)
        self.log(call, statement, row)

    def call(self, node: Any, package: str, names: tuple[str, ...]) -> list[Any]:
        """The arguments of ``package.Name(...)`` for a name in ``names``."""
        if node.type != "call_expression":
            raise Refused(f"{_text(node)[:40]!r} is not allowed")
        function, arguments = _children(node, 2)
        if function.type != "selector_expression":
            raise Refused(f"{_text(function)[:40]!r} is not allowed")
        operand, dot, name = _children(function, 3)
        if _text(operand) != package or name.type != "field_identifier" or _text(name) not in names:
            raise Refused(f"{_text(function)} is not allowed")
        self.package(operand)
        return _arguments(arguments)

    def log(self, node: Any, statement: Any, row: int) -> None:
        arguments = self.call(node, "log", ("Printf", "Println", "Print"))
        if not arguments or arguments[0].type not in ("interpreted_string_literal", "raw_string_literal"):
            raise Refused("a log call starts with a constant string")
        for argument in arguments[1:]:
            self.argument(argument, statement, row)

    def argument(self, node: Any, statement: Any, row: int) -> None:
        if node.type in ("interpreted_string_literal", "raw_string_literal", "int_literal", "float_literal"):
            return
        if node.type == "identifier":
            self.bound(node, statement, row)
            return
        if node.type == "call_expression":
            function = node.child_by_field_name("function")
            if function is not None and function.type == "selector_expression" \
                    and _children(function, 3)[0].type == "call_expression":
                inner, dot, unit = _children(function, 3)
                if _text(unit) not in ("Seconds", "Milliseconds", "Microseconds") or _arguments(_children(node, 2)[1]):
                    raise Refused(f"{_text(unit)}() is not allowed")
                node = inner
            since = self.call(node, "time", ("Since",))
            if len(since) != 1 or since[0].type != "identifier":
                raise Refused("time.Since takes a name bound to time.Now()")
            self.bound(since[0], statement, row)
            return
        raise Refused(f"a {node.type} is not allowed")

    def finish(self) -> None:
        for package, used in self.inserted_imports.items():
            if not used:
                raise Refused(f'the inserted import of "{package}" is not used by any inserted line (Go refuses '
                              "unused imports)")
        for binding in self.bindings:
            if not binding.read:
                raise Refused(f"the inserted name {binding.name!r} is never read (Go refuses unused variables)")


# -- tree helpers ------------------------------------------------------------------------------------


def _text(node: Any) -> str:
    return node.text.decode("utf-8", "replace") if node is not None else ""


def _leaves(node: Any) -> list[Any]:
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        if current.child_count == 0:
            found.append(current)
        stack.extend(current.children)
    return found


def _children(node: Any, count: int) -> list[Any]:
    """Exactly ``count`` children (comments included), else Refused."""
    children = list(node.children)
    if len(children) != count:
        raise Refused(f"{_text(node)[:60]!r} is not of an allowed form")
    return children


def _arguments(node: Any) -> list[Any]:
    """The values of an argument or parameter list: "(" [value ("," value)*] ")", exactly."""
    children = list(node.children)
    if len(children) < 2 or children[0].type != "(" or children[-1].type != ")":
        raise Refused("a plain argument list")
    inner = children[1:-1]
    values = inner[0::2]
    if any(c.type != "," for c in inner[1::2]) or (inner and len(inner) % 2 == 0):
        raise Refused("a plain argument list")
    if any(v.type in (",", "comment", "spread_element", "variadic_argument") for v in values):
        raise Refused("a plain argument list")
    return values


def _go_imports(root: Any) -> set[tuple[str | None, str]]:
    """(alias or None, path) of every import of a Go file."""
    found: set[tuple[str | None, str]] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type == "import_spec":
            alias = node.child_by_field_name("name")
            path = node.child_by_field_name("path")
            found.add((_text(alias) if alias is not None else None, _text(path).strip('"`')))
        stack.extend(node.children)
    return found
