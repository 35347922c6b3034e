"""Insertion scripts: render them, read their edits, check them against the allowlist, run them.

A script is a small Python file in a safe subset: it may import only from
``pytest_telemetry_inject.scriptlib``, define names and functions, loop with ``for`` and
call allowed builtins. Template scripts are trusted (this package wrote them); a script from
the LLM refactorer is untrusted: it must pass ``check_security`` and runs in the sandbox.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, cast

from .. import __version__
from ..errors import SecurityViolation, ValidationError
from ..formats import ScriptHeader
from ..formats import edits_from_json as edits_from_json
from ..formats import edits_to_json as edits_to_json
from ..scriptlib import Edit, Indent, Insert, InsertAfter, InsertText

HELPER_MODULE = "pytest_telemetry_inject.scriptlib"
MAX_SCRIPT_CHARS = 200_000

ALLOWED_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "chr", "dict", "enumerate", "filter", "float", "frozenset",
    "int", "isinstance", "len", "list", "map", "max", "min", "ord", "range", "repr",
    "reversed", "set", "sorted", "str", "sum", "tuple", "zip",
    "Exception", "IndexError", "KeyError", "RuntimeError", "TypeError", "ValueError",
    "True", "False", "None",
})

# Attribute names a script may use: the public methods of the plain types it works with and
# the fields of scriptlib's edits. An allowlist, not a denylist: frame and code attributes
# (``gi_frame.f_back.f_globals``) and ``str.format``'s field access must stay out of reach.
_EDIT_FIELDS = frozenset({"first", "last", "unit", "after", "keep", "before", "text", "line", "column", "maps_to"})
_SAFE_METHODS = frozenset(
    name for kind in (str, list, dict, tuple, set, frozenset, int) for name in dir(kind)
    if not name.startswith("_")
) - {"format", "format_map", "maketrans", "from_bytes", "to_bytes", "fromkeys", "mro"}
ALLOWED_ATTRIBUTES = _EDIT_FIELDS | _SAFE_METHODS

_ALLOWED_NODES = (
    ast.Module, ast.Expr, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.FunctionDef,
    ast.arguments, ast.arg, ast.Return, ast.If, ast.For, ast.Break, ast.Continue, ast.Pass,
    ast.Name, ast.Load, ast.Store, ast.Del, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.Call,
    ast.keyword, ast.Attribute, ast.Subscript, ast.Slice, ast.BinOp, ast.UnaryOp, ast.BoolOp,
    ast.Compare, ast.IfExp, ast.JoinedStr, ast.FormattedValue, ast.Starred, ast.ImportFrom,
    ast.alias, ast.Raise, ast.Assert, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
    ast.expr_context,
)


def _render_edit(edit: Edit) -> str:
    if isinstance(edit, Indent):
        keep = "[" + ", ".join(str(k) for k in edit.keep) + "]"
        return (f"indent(first={edit.first}, last={edit.last}, unit={edit.unit!r}, "
                f"after={edit.after!r}, keep={keep})")
    if isinstance(edit, Insert):
        return f"insert(before={edit.before}, text={edit.text!r})"
    if isinstance(edit, InsertText):
        return f"insert_text(line={edit.line}, column={edit.column}, text={edit.text!r})"
    if edit.maps_to:
        return f"insert_after(line={edit.line}, text={edit.text!r}, maps_to={edit.maps_to})"
    return f"insert_after(line={edit.line}, text={edit.text!r})"


def render_script(*, language: str, span_name: str, template: str, source_sha256: str,
                  output_sha256: str, edits: Sequence[Edit]) -> str:
    """The text of a template's insertion script: readable, deterministic, content-addressed.
    Its header (``formats.ScriptHeader``) is what readers take from a script's text; the
    edits are ``EDITS``, the rest is prose and the ``transform`` every script has."""
    names = {Indent: "indent", Insert: "insert", InsertAfter: "insert_after", InsertText: "insert_text"}
    helpers = sorted({names[type(e)] for e in edits})
    body = "\n".join(f"    {_render_edit(e)}," for e in edits)
    return (
        f'"""Insertion script for `{span_name}` ({language}), from template {template}.\n'
        "\n"
        f"Written by pytest-telemetry-inject {__version__}. It applies to one version of the\n"
        "function (the source whose sha256 is SOURCE_SHA256) and refuses any other; applied\n"
        'to its own output it changes nothing. Line numbers count from the function\'s first line.\n'
        '"""\n'
        "\n"
        f"from {HELPER_MODULE} import apply, {', '.join(helpers)}\n"
        "\n"
        f"{ScriptHeader(language, span_name, template, source_sha256, output_sha256).render()}"
        "\n"
        "EDITS = [\n"
        f"{body}\n"
        "]\n"
        "\n"
        "\n"
        "def transform(source):\n"
        "    return apply(source, EDITS, source_sha256=SOURCE_SHA256, output_sha256=OUTPUT_SHA256)\n"
    )


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# -- the security allowlist -------------------------------------------------------------------


def check_security(text: str) -> ast.Module:
    """Parse ``text`` and refuse anything outside the safe subset (one-line reasons)."""
    if len(text) > MAX_SCRIPT_CHARS:
        raise SecurityViolation(f"the script is longer than {MAX_SCRIPT_CHARS} characters")
    try:
        tree = ast.parse(text, "<insertion script>")
    except SyntaxError as exc:
        raise ValidationError(f"the script does not parse: line {exc.lineno}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ValidationError(f"the script does not parse: {exc}") from None
    defined: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            defined.add(node.id)
        elif isinstance(node, ast.FunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.alias):
            defined.add(node.asname or node.name)
    # Kinds of problem in order of severity; within a kind, the first in the source is named.
    found: list[list[tuple[tuple[int, int, int], str]]] = [[], [], [], []]
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        where = (line, getattr(node, "col_offset", 0), getattr(node, "end_col_offset", 0) or 0)
        if not isinstance(node, _ALLOWED_NODES):
            found[0].append((where, f"line {line}: {type(node).__name__} is not allowed in an insertion script"))
        elif isinstance(node, ast.ImportFrom):
            if node.module != HELPER_MODULE or node.level:
                found[1].append((where, f"line {line}: only `from {HELPER_MODULE} import ...` is allowed"))
            for alias in node.names:
                if alias.name not in _helper_names():
                    found[1].append((where, f"line {line}: {HELPER_MODULE} has no public name {alias.name!r}"))
        elif isinstance(node, ast.Name):
            if node.id.startswith("__") or (isinstance(node.ctx, ast.Load) and node.id not in defined
                                            and node.id not in ALLOWED_BUILTINS):
                found[2].append((where, f"line {line}: the name {node.id!r} is not allowed"))
        elif isinstance(node, ast.Attribute):
            if node.attr not in ALLOWED_ATTRIBUTES:
                found[3].append((where, f"line {line}: access to the attribute {node.attr!r} is not allowed"))
        elif isinstance(node, ast.FunctionDef):
            if node.decorator_list:
                found[0].append((where, f"line {line}: decorators are not allowed"))
            if node.name.startswith("_"):
                found[2].append((where, f"line {line}: function names may not start with '_'"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            found[0].append((where, f"line {line}: bytes constants are not allowed"))
    for problems in found:
        if problems:
            raise SecurityViolation(min(problems)[1])
    if not any(isinstance(n, ast.FunctionDef) and n.name == "transform" for n in tree.body):
        raise ValidationError("the script defines no transform(source) function")
    return tree


def _helper_names() -> frozenset[str]:
    from .. import scriptlib

    return frozenset(scriptlib.__all__)


def _restricted_builtins(helper: Any) -> dict[str, Any]:
    allowed = {name: getattr(builtins, name) for name in ALLOWED_BUILTINS if hasattr(builtins, name)}

    def restricted_import(name: str, globals: Any = None, locals: Any = None,
                          fromlist: Sequence[str] = (), level: int = 0) -> Any:
        if name == HELPER_MODULE and not level:
            return helper
        raise ImportError(f"insertion scripts may not import {name}")

    allowed["__import__"] = restricted_import
    return allowed


def load_transform(text: str, *, check: bool = True) -> Callable[[str], str]:
    """``transform`` of a trusted script, executed in this process with restricted builtins.
    Untrusted scripts go through ``engine.sandbox`` instead."""
    from .. import scriptlib

    tree = check_security(text) if check else ast.parse(text)
    code = compile(tree, "<insertion script>", "exec", dont_inherit=True)
    namespace: dict[str, Any] = {"__builtins__": _restricted_builtins(scriptlib), "__name__": "insertion_script"}
    exec(code, namespace)
    transform = namespace.get("transform")
    if not callable(transform):
        raise ValidationError("the script defines no transform(source) function")
    return cast("Callable[[str], str]", transform)
