"""Is every line a model inserted telemetry, and nothing else? ``check_inserted_lines``.

The traditional pipeline accepts a model's answer only if removing the inserted lines
(each ending with the marker comment) gives back the original file exactly, AND every
inserted line is one statement of the small telemetry grammar below, in a place where it
can change nothing but the telemetry. Anything else is refused with a one-line reason,
which goes back to the model like any other validation failure. The grammar is an
allowlist: what it does not name is refused.

Python (checked with ``ast`` on the whole output AND on each line alone; both must agree)::

    line      := STATEMENT "  # telemetry-inject"        one statement, alone on its line
    STATEMENT := import | NAME "=" VALUE | CALL
    import    := "import" MODULE ["as" NAME] | "from" MODULE "import" MEMBER ["as" NAME]
                 MODULE: time, logging, pytest_telemetry_inject.runtime, opentelemetry.trace
                 (and their parents: from pytest_telemetry_inject import runtime,
                 from opentelemetry import trace); MEMBER: a function listed below
    VALUE     := CLOCK | NUMBER-EXPR
               | logging.getLogger([LABEL])                 -> a logger
               | <runtime>.tracer(LABEL)                     -> a runtime tracer
               | <runtime tracer>.start()                    -> a runtime start
               | <opentelemetry.trace>.get_tracer(LABEL)     -> a tracer
               | <tracer>.start_span(STRING) | trace.get_current_span()  -> a span
    CALL      := <logger>.debug|info|warning(MESSAGE, ARG, ... [, stacklevel=INT])
               | <runtime tracer>.end(STRING, <runtime start>)
               | <span>.end() | <span>.add_event(STRING) | <span>.set_attribute(STRING, ARG)
    CLOCK     := time.perf_counter|perf_counter_ns|monotonic|monotonic_ns|time|time_ns|
                 process_time|process_time_ns()
    NUMBER-EXPR := INT | FLOAT | CLOCK | <a number bound by an inserted line>
               | NUMBER-EXPR (+ | - | *) NUMBER-EXPR | NUMBER-EXPR / <non-zero constant> | -NUMBER-EXPR
    MESSAGE   := STRING | F-STRING;   LABEL := STRING | __name__
    ARG       := constant | F-STRING | NUMBER-EXPR | __name__ | a parameter of the function
    F-STRING  := f"..." whose fields are ARGs (a format spec only on a NUMBER-EXPR)

Names: a name an inserted line binds must not occur anywhere in the original file (an
inserted ``import time`` may rebind a module-level ``import time`` of the original), nor be
a builtin or start with ``__``. A name an inserted line reads must be bound earlier, by an
inserted line (in the same function, in a block that holds the reader, or at module
level) or by a module-level import or ``getLogger`` assignment of the original that is the
name's only binding; or be a parameter of the enclosing function (never deleted there),
or ``__name__``. No other attribute, no subscript, no dunder, no lambda, comprehension,
``await``, ``yield`` or call of anything else. Module level may hold imports and
assignments; calls only go inside functions; nothing goes in a class body. Nothing may be
inserted before a module's or a function's docstring (or inside it), nor before the
``from __future__`` imports, and every docstring must be the same after.

JavaScript, TypeScript, TSX and Go are checked on tree-sitter's own tokens (the parser of
the output, so no second lexer can disagree with it): see ``telemetry_check_brace``. Every
other language is refused outright (``unchecked_reason``): no model line goes into a file
whose telemetry nobody can check.
"""

from __future__ import annotations

import ast
import builtins
import io
import tokenize
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from ..scriptlib import split_lines
from .inserted import InsertedRow, snippet

MARKER = "telemetry-inject"
MAX_LINE_CHARS = 400
"""A telemetry line is short; a longer inserted line is refused before it is parsed."""

CHECKED_LANGUAGES = ("python", "javascript", "typescript", "tsx", "go")

# -- the Python allowlist -----------------------------------------------------------------------

MODULES = frozenset({"time", "logging", "pytest_telemetry_inject", "pytest_telemetry_inject.runtime",
                     "opentelemetry", "opentelemetry.trace"})
IMPORTABLE = frozenset({"time", "logging", "pytest_telemetry_inject.runtime", "opentelemetry.trace"})
"""What ``import X`` may name (a parent package is reached only as ``from parent import child``)."""

CLOCKS = frozenset(f"time.{name}" for name in ("perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns",
                                                "time", "time_ns", "process_time", "process_time_ns"))
# A function: (what it returns, how its arguments look).
FUNCTIONS: dict[str, tuple[str, str]] = {
    **{clock: ("number", "none") for clock in CLOCKS},
    "logging.getLogger": ("logger", "optional-label"),
    "pytest_telemetry_inject.runtime.tracer": ("rt_tracer", "label"),
    "opentelemetry.trace.get_tracer": ("otel_tracer", "label"),
    "opentelemetry.trace.get_current_span": ("otel_span", "none"),
}
# A method of a kind of value: (what it returns, how its arguments look); "" returns nothing
# (a statement of its own).
METHODS: dict[tuple[str, str], tuple[str, str]] = {
    **{("logger", level): ("", "message") for level in ("debug", "info", "warning")},
    ("rt_tracer", "start"): ("rt_state", "none"),
    ("rt_tracer", "end"): ("", "string-state"),
    ("otel_tracer", "start_span"): ("otel_span", "string"),
    ("otel_span", "end"): ("", "none"),
    ("otel_span", "add_event"): ("", "string"),
    ("otel_span", "set_attribute"): ("", "string-arg"),
}
ALLOWED_HINT = ("allowed: `import time`/`logging`, `NAME = time.perf_counter()`, "
                "`NAME = logging.getLogger(__name__)`, `LOGGER.debug/info/warning(\"...\", ARGS)` whose ARGS are "
                "constants, f-strings, numbers and the function's parameters")
_BUILTINS = frozenset(dir(builtins))
# Every node of an inserted statement is one of these (a node allowlist in the manner of
# engine.scripts.check_security, checked before the grammar: a second, independent line).
LINE_NODES = (
    ast.Module, ast.Import, ast.ImportFrom, ast.alias, ast.Assign, ast.Expr, ast.Call, ast.keyword,
    ast.Name, ast.Attribute, ast.Constant, ast.JoinedStr, ast.FormattedValue, ast.BinOp, ast.UnaryOp,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub, ast.UAdd, ast.Load, ast.Store,
)


def check_inserted_lines(original: str, output: str, *, language: str,
                         function_names: Collection[str] | None = None, marker: str = MARKER) -> str | None:
    """None when every line ``output`` adds to ``original`` is telemetry of the grammar
    above, in a place where it changes nothing else; else a one-line reason.

    The inserted lines are those holding ``marker``; removing them must give back
    ``original`` exactly. ``function_names``, when given, are the functions the model was
    asked to instrument: a statement other than an import or a module-level assignment
    must be inside one of them (``<anonymous>`` stands for functions without a name)."""
    lines = split_lines(output)
    if "".join(line for line in lines if marker not in line) != original:
        return ("removing the inserted lines does not give back the original file exactly: insert whole lines "
                f"only, each ending with the marker comment {marker!r}")
    rows = inserted_rows(original, output, marker)
    if not rows:
        return "no telemetry was inserted"
    for row in rows:
        text = _line_text(lines[row.output])
        if len(text) > MAX_LINE_CHARS:
            return f"inserted line {row.output + 1} is longer than {MAX_LINE_CHARS} characters; telemetry is short"
    if language == "python":
        return PythonCheck(original, output, rows, function_names, marker).run()
    if language in ("javascript", "typescript", "tsx", "go"):
        from .telemetry_check_brace import check_brace

        return check_brace(original, output, rows, language=language, function_names=function_names,
                           marker=marker)
    return unchecked_reason(language)


def allowed_forms(language: str) -> str:
    """What a model may insert into a file of ``language``, for its prompt (one line)."""
    if language == "python":
        return ALLOWED_HINT[len("allowed: "):]
    if language in ("javascript", "typescript", "tsx", "go"):
        from .telemetry_check_brace import GO_HINT, JS_HINT

        return (GO_HINT if language == "go" else JS_HINT)[len("allowed: "):]
    return "nothing (no strict check of this language's telemetry exists)"


def unchecked_reason(language: str) -> str | None:
    """Why a model may not insert lines into files of ``language`` (None: it may)."""
    if language in CHECKED_LANGUAGES:
        return None
    return (f"model insertions into {language or 'these'} files are refused: no strict check of their telemetry "
            f"exists (checked: {', '.join(CHECKED_LANGUAGES)})")


def inserted_rows(original: str, output: str, marker: str = MARKER) -> list[InsertedRow]:
    rows, original_row = [], 0
    for index, line in enumerate(split_lines(output)):
        if marker in line:
            rows.append(InsertedRow(index, original_row))
        else:
            original_row += 1
    return rows


def _line_text(line: str) -> str:
    return line.rstrip("\r\n")


# -- Python -------------------------------------------------------------------------------------------


class Refused(Exception):
    """One line's reason (without the line number)."""


@dataclass
class _Binding:
    name: str
    kind: str
    line: int
    """1-based output line of the binding statement."""
    scope: ast.AST
    """The function (or module) it belongs to."""
    block: list[ast.stmt] | None
    """The statement list that holds it (its readers must be inside that list)."""
    module: str = ""
    """For a module or function binding: what it names."""


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module, ast.Lambda)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


class PythonCheck:
    def __init__(self, original: str, output: str, rows: list[InsertedRow], function_names: Collection[str] | None,
                 marker: str) -> None:
        self.original = original
        self.output = output
        self.rows = rows
        self.lines = split_lines(output)
        self.function_names = set(function_names) if function_names is not None else None
        self.marker = marker
        self.bindings: list[_Binding] = []

    def run(self) -> str | None:
        try:
            before = ast.parse(self.original)
        except (SyntaxError, ValueError):
            return "the original file does not parse as Python: model insertions into it are refused"
        problem = self._placement(before)  # first: such a line may also make the output unparsable
        if problem:
            return problem
        try:
            after = ast.parse(self.output)
        except SyntaxError as exc:
            return f"the output does not parse: line {exc.lineno}: {exc.msg}"
        except ValueError as exc:
            return f"the output does not parse: {exc}"
        self.parents = {child: node for node in ast.walk(after) for child in ast.iter_child_nodes(node)}
        self.blocks = _blocks(after)
        self.module_body = after.body
        self.identifiers = _identifiers(before)
        self.original_imports = _module_imports(before)
        self.inserted = {row.output + 1 for row in self.rows}
        self.starts: dict[int, list[ast.stmt]] = {}
        for node in ast.walk(after):
            if isinstance(node, ast.stmt):
                self.starts.setdefault(node.lineno, []).append(node)
        self._original_bindings(after)
        for row in self.rows:
            number = row.output + 1
            text = _line_text(self.lines[row.output])
            try:
                self._line(number, text)
            except Refused as exc:
                return f"inserted line {number} is not telemetry ({exc}): {snippet(text)}; {ALLOWED_HINT}"
        if _docstrings(before) != _docstrings(after):
            return "the insertions change a docstring; insert telemetry after a docstring, never before it"
        return None

    # -- where lines may go ---------------------------------------------------------------------

    def _placement(self, tree: ast.Module) -> str | None:
        """Nothing before (or inside) a docstring, nothing before the future imports."""
        guarded: list[tuple[int, int, str]] = []  # (after this line, up to this line, what)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, *_FUNCTIONS, ast.ClassDef)) and ast.get_docstring(node, False) is not None:
                doc = node.body[0]
                header = 0 if isinstance(node, ast.Module) else node.lineno
                what = "the module's docstring" if isinstance(node, ast.Module) else f"the docstring of {node.name}"
                guarded.append((header, doc.end_lineno or doc.lineno, what))
        futures = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
        if futures:
            guarded.append((0, max(n.end_lineno or n.lineno for n in futures), "the `from __future__` imports"))
        for row in self.rows:
            before = row.before + 1  # the original line (1-based) the inserted line goes before
            for header, last, what in guarded:
                if header < before <= last:
                    return (f"inserted line {row.output + 1} goes before {what} (original line {last}): nothing may "
                            "be inserted above a docstring or a `from __future__` import")
        return None

    # -- one line --------------------------------------------------------------------------------

    def _line(self, number: int, text: str) -> None:
        comments = _comments(text)
        if comments != [self.marker]:
            raise Refused(f"the line must end with the comment `# {self.marker}` and hold no other comment")
        try:
            alone = ast.parse(text.strip())
        except SyntaxError as exc:
            raise Refused(f"it does not parse on its own: {exc.msg}") from None
        if len(alone.body) != 1:
            raise Refused("one statement per line")
        for part in ast.walk(alone):
            if not isinstance(part, LINE_NODES):
                raise Refused(f"{type(part).__name__} is not allowed in a telemetry line")
            if isinstance(part, ast.Name) and part.id.startswith("__") and part.id != "__name__":
                raise Refused(f"the name {part.id!r} is not allowed")
            if isinstance(part, ast.Attribute) and part.attr.startswith("_"):
                raise Refused(f"the attribute {part.attr!r} is not allowed")
        nodes = self.starts.get(number, [])
        if len(nodes) != 1 or nodes[0].end_lineno != number:
            raise Refused("it is not a statement of its own in the file (inside a string, an expression or "
                          "a line continuation?)")
        node = nodes[0]
        if ast.dump(node) != ast.dump(alone.body[0]):
            raise Refused("it means something else in the file than on its own")
        scope = self._scope(node)
        if isinstance(scope, ast.ClassDef):
            raise Refused(f"it is in the body of class {scope.name}; telemetry goes inside functions")
        if isinstance(scope, ast.Lambda):
            raise Refused("it is inside a lambda")
        self._statement(node, scope, number)

    def _scope(self, node: ast.AST) -> ast.AST:
        parent = self.parents.get(node)
        while parent is not None and not isinstance(parent, _SCOPES):
            parent = self.parents.get(parent)
        assert parent is not None
        return parent

    def _in_named_function(self, scope: ast.AST) -> bool:
        if self.function_names is None:
            return True
        node: ast.AST | None = scope
        while node is not None:
            if isinstance(node, _FUNCTIONS) and node.name in self.function_names:
                return True
            node = self.parents.get(node)
        return False

    def _statement(self, node: ast.stmt, scope: ast.AST, number: int) -> None:
        block = self.blocks.get(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name, module in _import_bindings(node):
                self._bind(name, "module" if module in MODULES else "function", number, scope, block, module)
            return
        if isinstance(scope, ast.Module) and not isinstance(node, ast.Assign):
            raise Refused("only imports and assignments go at module level; calls go inside a function")
        if not isinstance(scope, ast.Module) and not self._in_named_function(scope):
            raise Refused("it is not inside one of the functions to instrument")
        if isinstance(node, ast.Assign):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                raise Refused("assign to one plain name")
            kind = self._value(node.value, node, scope, number)
            if not kind:
                raise Refused("the value assigned is not telemetry")
            self._bind(node.targets[0].id, kind, number, scope, block)
            return
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            if self._call(node.value, node, scope, number) != "":
                raise Refused("a call whose result is dropped is not telemetry")
            return
        raise Refused(f"a {type(node).__name__} statement is not allowed")

    def _bind(self, name: str, kind: str, number: int, scope: ast.AST, block: list[ast.stmt] | None,
              module: str = "") -> None:
        if name.startswith("__") or name in _BUILTINS:
            raise Refused(f"the name {name!r} may not be bound")
        # A name the file already uses is never rebound (in a function it would also turn the
        # function's reads of a global into reads of an unbound local); only a module-level
        # import may repeat the original's own module-level import of the same module.
        repeat = isinstance(scope, ast.Module) and kind in ("module", "function") \
            and self.original_imports.get(name) == module
        if name in self.identifiers and not repeat:
            raise Refused(f"the name {name!r} is already used by the file; bind a new name")
        for other in self.bindings:
            if other.name != name:
                continue
            if other.scope is scope and (other.kind, other.module) != (kind, module):
                raise Refused(f"the name {name!r} is bound to something else by another line")
            if other.scope is not scope and ast.Module in (type(other.scope), type(scope)):
                raise Refused(f"the name {name!r} is bound both at module level and in a function")
        self.bindings.append(_Binding(name, kind, number, scope, block, module))

    def _original_bindings(self, tree: ast.Module) -> None:
        """Module-level imports and ``getLogger`` assignments of the original that are the
        only binding of their name: inserted lines may use them."""
        counts = _binding_counts(ast.parse(self.original))
        for node in tree.body:
            if node.lineno in self.inserted:
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name, module in _import_bindings(node, strict=False):
                    if counts.get(name) == 1 and (module in MODULES or module in FUNCTIONS):
                        kind = "module" if module in MODULES else "function"
                        self.bindings.append(_Binding(name, kind, node.lineno, tree, tree.body, module))
            elif (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                  and counts.get(node.targets[0].id) == 1):
                try:
                    kind = self._value(node.value, node, tree, node.lineno)
                except Refused:
                    continue
                if kind == "logger":
                    self.bindings.append(_Binding(node.targets[0].id, kind, node.lineno, tree, tree.body))

    # -- expressions ------------------------------------------------------------------------------

    def _lookup(self, name: str, stmt: ast.stmt, scope: ast.AST, number: int) -> _Binding | None:
        """The latest binding of ``name`` that has surely run when ``stmt`` runs: earlier in a
        statement list that holds ``stmt`` (same scope), or earlier at the top of the module."""
        found = None
        for binding in self.bindings:
            if binding.name != name or binding.line >= number:
                continue
            if binding.scope is scope:
                visible = binding.block is not None and self._inside(stmt, binding.block)
            else:
                visible = isinstance(binding.scope, ast.Module) and binding.block is self.module_body
            if visible:
                found = binding
        return found

    def _inside(self, stmt: ast.AST, block: list[ast.stmt]) -> bool:
        node: ast.AST | None = stmt
        while node is not None:
            if node in block:
                return True
            node = self.parents.get(node)
        return False

    def _resolve(self, node: ast.expr, stmt: ast.stmt, scope: ast.AST, number: int) -> tuple[str, str]:
        """(kind, qualified name) of a name or an attribute chain."""
        if isinstance(node, ast.Name):
            if node.id.startswith("__"):
                raise Refused(f"the name {node.id!r} is not allowed")
            binding = self._lookup(node.id, stmt, scope, number)
            if binding is None:
                raise Refused(f"{node.id!r} is not bound by an earlier inserted line or an import of the file")
            return binding.kind, binding.module
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise Refused(f"the attribute {node.attr!r} is not allowed")
            kind, module = self._resolve(node.value, stmt, scope, number)
            if kind == "module":
                qualified = f"{module}.{node.attr}"
                if qualified in MODULES:
                    return "module", qualified
                if qualified in FUNCTIONS:
                    return "function", qualified
                raise Refused(f"{qualified} is not allowed")
            return f"method:{kind}", node.attr
        if isinstance(node, ast.Call):
            kind = self._call(node, stmt, scope, number)
            if not kind:
                raise Refused("a call that returns nothing is used as a value")
            return kind, ""
        raise Refused(f"{type(node).__name__} is not allowed here")

    def _call(self, node: ast.Call, stmt: ast.stmt, scope: ast.AST, number: int) -> str:
        """What the allowed call ``node`` returns ("" for nothing)."""
        kind, name = self._resolve(node.func, stmt, scope, number)
        if kind == "function":
            returns, arguments = FUNCTIONS[name]
        elif kind.startswith("method:") and (kind[7:], name) in METHODS:
            returns, arguments = METHODS[(kind[7:], name)]
        else:
            called = name or ast.unparse(node.func)
            raise Refused(f"the call of {called} is not allowed")
        self._arguments(node, arguments, stmt, scope, number)
        return returns

    def _arguments(self, node: ast.Call, shape: str, stmt: ast.stmt, scope: ast.AST, number: int) -> None:
        args, keywords = node.args, node.keywords
        if any(isinstance(a, ast.Starred) for a in args):
            raise Refused("no *arguments")
        if shape == "message":
            if any(k.arg != "stacklevel" or not _is_int(k.value) for k in keywords):
                raise Refused("the only keyword a log call may take is stacklevel=INT")
            if not args or not (_is_str(args[0]) or isinstance(args[0], ast.JoinedStr)):
                raise Refused("a log call's first argument is a string or an f-string")
            for arg in args:
                self._arg(arg, stmt, scope, number)
            return
        if keywords:
            raise Refused("no keyword arguments")
        expected = {"none": 0, "label": 1, "string": 1, "string-state": 2, "string-arg": 2}.get(shape)
        if shape == "optional-label":
            expected = len(args) if len(args) <= 1 else 1
        if len(args) != expected:
            raise Refused(f"{ast.unparse(node.func)} takes {expected} argument(s)")
        if shape in ("label", "optional-label") and args:
            first = args[0]
            if not (_is_str(first) or isinstance(first, ast.Name) and first.id == "__name__"):
                raise Refused("a logger's or tracer's name is a string or __name__")
        elif shape.startswith("string") and not _is_str(args[0]):
            raise Refused("the first argument is a string constant")
        if shape == "string-state":
            if not isinstance(args[1], ast.Name) or self._resolve(args[1], stmt, scope, number)[0] != "rt_state":
                raise Refused("end() takes the name bound to the tracer's start()")
        elif shape == "string-arg":
            self._arg(args[1], stmt, scope, number)

    def _value(self, node: ast.expr, stmt: ast.stmt, scope: ast.AST, number: int) -> str:
        if isinstance(node, ast.Call):
            return self._call(node, stmt, scope, number)
        self._number(node, stmt, scope, number)
        return "number"

    def _number(self, node: ast.expr, stmt: ast.stmt, scope: ast.AST, number: int) -> None:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise Refused("arithmetic only on numbers")
        elif isinstance(node, ast.Name):
            if self._parameter(node.id, scope):
                raise Refused(f"the parameter {node.id!r} is not known to be a number (no arithmetic or format "
                              "spec on it)")
            if self._resolve(node, stmt, scope, number)[0] != "number":
                raise Refused(f"{node.id!r} is not a number bound by an inserted line")
        elif isinstance(node, ast.Call):
            if self._call(node, stmt, scope, number) != "number":
                raise Refused("only a clock call gives a number")
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
                raise Refused(f"the operator {type(node.op).__name__} is not allowed")
            if isinstance(node.op, ast.Div) and not (isinstance(node.right, ast.Constant)
                                                     and _is_number(node.right) and node.right.value):
                raise Refused("divide only by a non-zero constant")
            self._number(node.left, stmt, scope, number)
            self._number(node.right, stmt, scope, number)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            self._number(node.operand, stmt, scope, number)
        else:
            raise Refused(f"{type(node).__name__} is not allowed in arithmetic")

    def _arg(self, node: ast.expr, stmt: ast.stmt, scope: ast.AST, number: int) -> None:
        """An argument of a log call (or a span attribute's value)."""
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (str, int, float, bool, type(None))):
                raise Refused(f"a {type(node.value).__name__} constant is not allowed")
            return
        if isinstance(node, ast.JoinedStr):
            for part in node.values:
                if isinstance(part, ast.FormattedValue):
                    self._field(part, stmt, scope, number)
                elif not _is_str(part):
                    raise Refused("an f-string holds text and fields only")
            return
        if isinstance(node, ast.Name):
            if node.id == "__name__" or self._parameter(node.id, scope):
                return
        self._number(node, stmt, scope, number)

    def _field(self, part: ast.FormattedValue, stmt: ast.stmt, scope: ast.AST, number: int) -> None:
        if isinstance(part.value, ast.JoinedStr):
            raise Refused("no f-string inside an f-string")
        if part.format_spec is not None:
            spec = part.format_spec
            if not isinstance(spec, ast.JoinedStr) or not all(_is_str(v) for v in spec.values):
                raise Refused("a format spec is constant text")
            self._number(part.value, stmt, scope, number)  # a spec on anything else could raise
            return
        self._arg(part.value, stmt, scope, number)

    def _parameter(self, name: str, scope: ast.AST) -> bool:
        if not isinstance(scope, _FUNCTIONS) or name.startswith("__"):
            return False
        args = scope.args
        names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
        if name not in names:
            return False
        deleted = any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Del) for n in ast.walk(scope))
        return not deleted


def _comments(text: str) -> list[str]:
    """The comments of one line, without ``#`` (refuses a line tokenize cannot read)."""
    found = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text.strip() + "\n").readline):
            if token.type == tokenize.COMMENT:
                found.append(token.string[1:].strip())
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        raise Refused(f"it does not parse on its own: {exc}") from None
    return found


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _is_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _is_number(node: ast.Constant) -> bool:
    return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def _import_bindings(node: ast.Import | ast.ImportFrom, strict: bool = True) -> Iterator[tuple[str, str]]:
    """(name bound, module or function it names) of an allowed import; Refused otherwise
    (with ``strict=False``, imports outside the allowlist are skipped)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name not in IMPORTABLE:
                if strict:
                    raise Refused(f"importing {alias.name} is not allowed")
                continue
            if alias.asname:
                yield alias.asname, alias.name
            else:
                top = alias.name.split(".")[0]
                yield top, top
        return
    if node.level or not node.module:
        if strict:
            raise Refused("relative imports are not allowed")
        return
    for alias in node.names:
        qualified = f"{node.module}.{alias.name}"
        if alias.name == "*" or (qualified not in IMPORTABLE and qualified not in FUNCTIONS):
            if strict:
                raise Refused(f"importing {qualified} is not allowed")
            continue
        yield alias.asname or alias.name, qualified


def _identifiers(tree: ast.AST) -> set[str]:
    """Every name the file mentions (read, bound, parameter, import, definition, global)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (*_FUNCTIONS, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
    return names


def _binding_counts(tree: ast.AST) -> dict[str, int]:
    """How many times each name is bound anywhere in the file (a global statement counts)."""
    counts: dict[str, int] = {}

    def add(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            add(node.id)
        elif isinstance(node, ast.arg):
            add(node.arg)
        elif isinstance(node, ast.alias):
            add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (*_FUNCTIONS, ast.ClassDef)):
            add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                add(name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            add(node.rest)
    return counts


def _module_imports(tree: ast.Module) -> dict[str, str]:
    """name -> module, for the module-level allowed imports of the original."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name, module in _import_bindings(node, strict=False):
                found[name] = module
    return found


def _blocks(tree: ast.AST) -> dict[ast.stmt, list[ast.stmt]]:
    """Each statement -> the statement list that holds it."""
    found: dict[ast.stmt, list[ast.stmt]] = {}
    for node in ast.walk(tree):
        for _field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                for stmt in value:
                    found[stmt] = value
    return found


def _docstrings(tree: ast.Module) -> list[tuple[str, str, str | None]]:
    return [(type(node).__name__, getattr(node, "name", ""), ast.get_docstring(node, False))
            for node in ast.walk(tree) if isinstance(node, (ast.Module, *_FUNCTIONS, ast.ClassDef))]
