"""Compile instrumented source as if it were the original: every position the interpreter
records (tracebacks, coverage's line and arc events, debuggers, ``inspect``) is the original
one, a tracer sees the original function's events, and the function sees its own frame as it
was. docs/plugin.md (On-the-fly compilation) tells the why; in short:

- positions: each node's line is mapped through the line map (inserted lines take the line
  they were inserted before) and its columns moved back by what the indentation added;
- each wrapped function is rebuilt for running, not for reading: its body ends every path
  that falls off it with its own line-less ``return``, and copies small returns where CPython
  copies them (:func:`_closed`, :func:`_rewrite_returns`), so that the wrapper's exit code,
  which has no line, runs with the line of the statement that ran last on its path;
- the runtime's try and with styles compile to the try form without its local (the start
  time stays on the value stack: ``bytecode.hide_slot``), OpenTelemetry's tracer and the
  functions the edit does not fit to the with form (whose ``return`` statements compile on
  stand-in lines, given back after: :func:`_stand_in_returns`); the entry code loses its line
  in the compiled table (``bytecode.unline``);
- a one-line body the text decorates gets the frameless form (:func:`_decorated_one_liners`).

The wrappers are the ones the Python language's strip finds.
"""

from __future__ import annotations

import ast
import copy
import dis
import sys
import warnings
from dataclasses import dataclass
from types import CodeType
from typing import TYPE_CHECKING, TypeVar, cast

from ..languages.python import DECO_MARK, wrappers
from ..scriptlib import split_lines
from . import bytecode
from .reconstruct import LineMap

# The form of the code compile_mapped produces (its history: ``bytecode.CODE_FORM``).
CODE_FORM = bytecode.CODE_FORM

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
# ``except*`` (3.11+; its fields are ``try``'s): ``try`` where there is none.
_TRY_STAR: type[ast.Try] = getattr(ast, "TryStar", ast.Try)
_Node = TypeVar("_Node", bound=ast.AST)

if TYPE_CHECKING:
    from typing import Protocol

    class _Located(Protocol):
        """A node with a position (``lineno`` in its ``_attributes``)."""

        lineno: int
        col_offset: int
        end_lineno: int | None
        end_col_offset: int | None


@dataclass
class _Plan:
    """A function to rebuild: its span name, the body it wraps and how."""

    function: ast.FunctionDef | ast.AsyncFunctionDef
    name: str
    body: list[ast.stmt]
    """The original statements (docstring excluded), positions mapped."""
    keep: list[ast.stmt]
    """Statements kept before the wrapper (the docstring)."""
    generator: bool
    target: str
    """``runtime`` (the runtime's tracer: the text's try and with styles alike) or ``otel``
    (OpenTelemetry's tracer: the with form)."""
    line: int
    col: int
    marker: str = ""


def compile_mapped(text: str, line_map: LineMap, filename: str, *, style: str | None = None,
                   bindable: bool = False) -> CodeType:
    """The code of the instrumented module ``text``, with the positions of the original.

    ``style``: the session's style. ``decorator`` keeps the decorator of the functions the
    text instruments with it because their body shares the ``def`` line; any other gets
    them the frameless form. ``bindable``: the code as the import hook caches it (it
    marshals), which must go through ``bytecode.bind_sites`` before it runs (the try form's
    entry reads its site from a constant that is a string until then); by default it is
    ready to run, its functions finding their sites by name."""
    tree = ast.parse(text, filename)
    lines = split_lines(text)
    wrapped = wrappers(tree, lines)  # found by the text's rows: before mapping
    decorated = _decorated_one_liners(tree, lines)
    _map_positions(tree, line_map)
    plans: list[_Plan] = []
    for function, wrapper in wrapped:
        if isinstance(wrapper, ast.With):
            plans.append(_plan_with(function, wrapper))
        elif _is_try_style(function, wrapper):  # (else a try statement: see wrappers())
            plans.append(_plan_try(function, cast(ast.Try, wrapper)))
        else:  # the logging target's try form (not a plugin target): lines only
            _unline_try(function, cast(ast.Try, wrapper))
    if style != "decorator":
        for function, decorator, kind, name in decorated:
            function.decorator_list.remove(decorator)
            plans.append(_plan_one_liner(function, name, "otel" if kind == "start_as_current_span" else "runtime"))
    for index, plan in enumerate(plans):
        plan.marker = f"\x00telemetry slot {index}: {plan.name}"
    fallback: set[str] = set()
    while True:
        hidden = set()
        stand_ins = _StandIns(max(line_map.original, default=0) + 1)
        for plan in plans:
            form = "with" if plan.target == "otel" or plan.marker in fallback or not bytecode.SUPPORTED else "try"
            _build(plan, form, stand_ins)
            if form == "try":
                hidden.add(plan.marker)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # ("is" with a literal: the marker's)
            code = compile(tree, filename, "exec", dont_inherit=True)
        failed: set[str] = set()
        code = _finish(code, hidden, failed, stand_ins.lines)
        if not failed:
            return code if bindable else bytecode.bind_sites(code, _no_site)
        fallback |= failed  # rebuilt in the with form, compiled again


def _no_site(name: str, code: CodeType) -> None:
    return None


# -- positions ---------------------------------------------------------------------------------


def _map_positions(tree: ast.Module, line_map: LineMap) -> None:
    original, shift = line_map.original, line_map.shift
    last = len(original)
    for each in ast.walk(tree):
        lineno = getattr(each, "lineno", None)
        if lineno is None:
            continue
        node = cast("_Located", each)
        end = getattr(node, "end_lineno", None) or lineno
        # Columns are UTF-8 byte offsets; an indentation unit is ASCII, so characters = bytes.
        if 1 <= lineno <= last:
            node.lineno = original[lineno - 1]
            node.col_offset = max(0, node.col_offset - shift[lineno - 1])
        if 1 <= end <= last:
            node.end_lineno = max(original[end - 1], node.lineno)
            end_col = getattr(node, "end_col_offset", None)
            if end_col is not None:
                end_col = max(0, end_col - shift[end - 1])
                if node.end_lineno == node.lineno:
                    end_col = max(end_col, node.col_offset)
                node.end_col_offset = end_col


def _place(node: _Node, line: int, col: int = 0, *, subtree: bool = True) -> _Node:
    """The node (and its subtree) at ``line``, column ``col``; -1: no line and no columns."""
    for each in ast.walk(node) if subtree else (node,):
        if "lineno" in each._attributes:
            located = cast("_Located", each)
            located.lineno = located.end_lineno = line
            located.col_offset = located.end_col_offset = -1 if line < 0 else col
    return node


def _lineless(node: _Node) -> _Node:
    return _place(node, -1)


# -- every way out of the body is a return ------------------------------------------------------


def _ends(body: list[ast.stmt]) -> bool:
    """The list cannot fall off its end (at a function's tail, where no loop encloses it)."""
    return bool(body) and isinstance(body[-1], (ast.Return, ast.Raise))


def _closed(body: list[ast.stmt], final: ast.Return | None = None) -> list[ast.stmt]:
    """``body`` with a ``return`` at the end of every path that falls off it: a copy of
    ``final``, or a line-less ``return`` (the function's own end: its implicit ``return
    None``).

    The interpreter copies the exit code (with its implicit ``return None``) once per way
    in, with the line of the statement or test before it, when that way in carries a line
    (a statement it follows, a conditional jump); the jump out of a branch of an
    ``if``/``else`` (or of a nested ``if``, a ``match`` case, a ``try``/``except``) carries
    none, and the block it reaches takes the line of whatever precedes it in the code's
    layout. A ``return`` at the end of each such branch leaves no such jump: its exit code
    follows the branch's last statement in one block.

    Only tail positions are touched, never a loop body or a ``finally`` block (whose code
    also runs on the exception path, where no ``return`` may go); a ``try`` body's
    ``return`` runs the ``finally`` block on its way out, as falling off the body does. Not
    a ``with`` body either: its exit code, which runs after the body, has the ``with``
    line, so the jumps to it carry a line. A ``break`` out of a loop at the end is a
    ``return`` (it jumps to the ``return`` after the loop, which CPython copies into the
    jumping block when it is small). A ``final`` with a value goes only where evaluating it
    earlier changes nothing: not into a ``try`` (an error would be caught, or chained to the
    one being handled) or past a ``finally`` or ``with`` exit that runs before it."""
    if body:
        _close_last(body[-1], final)
    if not _ends(body):
        body.append(_return_like(final, None))
    return body


def _close_last(last: ast.stmt, final: ast.Return | None) -> None:
    if isinstance(last, ast.If):
        last.body = _closed(last.body, final)
        if last.orelse:
            last.orelse = _closed(last.orelse, final)
    elif type(last).__name__ == "Match":
        for case in last.cases:  # type: ignore[attr-defined]
            case.body = _closed(case.body, final)
    elif isinstance(last, (ast.For, ast.While)):
        _breaks_return(last.body, final, False)
        if last.orelse:
            last.orelse = _closed(last.orelse, final)
    elif final is not None:
        return
    elif isinstance(last, ast.Try):
        if last.orelse:
            last.orelse = _closed(last.orelse)
        else:
            last.body = _closed(last.body)
        for handler in last.handlers:
            handler.body = _closed(handler.body)
    elif type(last).__name__ == "TryStar":  # (3.11+; no return in an except* block)
        last = cast(ast.Try, last)  # (its fields are try's)
        if last.orelse:
            last.orelse = _closed(last.orelse)
        else:
            last.body = _closed(last.body)


def _return_like(final: ast.Return | None, where: ast.stmt | None) -> ast.stmt:
    if final is None:
        node = ast.Return(value=None)
        return ast.copy_location(node, where) if where is not None else _lineless(node)
    return copy.deepcopy(final)


def _breaks_return(body: list[ast.stmt], final: ast.Return | None, guarded: bool) -> None:
    """Each ``break`` of the loop whose body this is (not those of inner loops) returns
    instead: ``final`` where nothing runs between the two (not inside a ``try`` or a
    ``with`` in the loop), after a ``pass`` that keeps the ``break``'s line."""
    for index, stmt in enumerate(body):
        if isinstance(stmt, ast.Break):
            if final is None:
                body[index] = _return_like(None, stmt)
            elif not guarded:
                body[index:index + 1] = [ast.copy_location(ast.Pass(), stmt), _return_like(final, None)]
        elif isinstance(stmt, (*_FUNCTIONS, ast.ClassDef)):
            continue
        elif isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            _breaks_return(stmt.orelse, final, guarded)  # an inner loop's else clause breaks out of this loop
        else:
            inner = guarded or isinstance(stmt, (ast.With, ast.AsyncWith, ast.Try, getattr(ast, "TryStar", ast.Try)))
            for field in ("body", "orelse", "finalbody"):
                _breaks_return(getattr(stmt, field, None) or [], final, inner)
            for part in (*getattr(stmt, "handlers", ()), *getattr(stmt, "cases", ())):
                _breaks_return(part.body, final, inner)


# The instructions a ``return`` runs to leave each enclosing block before its RETURN_VALUE
# (CPython 3.11 to 3.13), with the value on the stack: a ``for`` loop pops its iterator
# (SWAP, POP_TOP), an ``except`` clause its exception (SWAP, POP_EXCEPT; three more to delete
# an ``as`` name), a ``finally`` block on the exception path (SWAP, POP_TOP, POP_EXCEPT); a
# ``with`` statement calls its exit and a ``finally`` block runs: more than CPython copies.
_FAR = 99
_COPIED = 4  # CPython's MAX_COPY_SIZE: an exit block this small is copied into each jump to it


def _rewrite_returns(body: list[ast.stmt], cost: int = 0) -> None:
    """Give the function's returns the shape CPython gives their exit when it copies it.

    CPython copies a small exit block (``return x``, ``return a, b``: at most four
    instructions, those leaving the enclosing blocks included) into each unconditional jump
    to it, so that the paths that reach it return without a jump, each with its own line.
    The instrumented exit also ends the span and is never that small, so the same paths
    would jump to one copy (and on Python 3.12+, a loop's exhaustion inside a branch would
    branch to that jump, on the loop's line, instead of to the return). So where the
    original's exit is that small, it gets copied here, in the tree: ``return a if test else
    b`` becomes ``if test: return a`` / ``else: return b`` (the two values join before the
    return), and a small ``return`` after an ``if``, ``match`` or loop is also put at the end
    of each of its branches that falls into it (:func:`_closed`)."""
    for index, stmt in enumerate(body):
        if isinstance(stmt, ast.Return) and isinstance(stmt.value, ast.IfExp) and cost + 1 < _COPIED:
            body[index] = stmt = _split(stmt)
        if isinstance(stmt, (*_FUNCTIONS, ast.ClassDef)):
            continue
        if isinstance(stmt, (ast.Try, _TRY_STAR)):
            _rewrite_returns(stmt.body, _FAR if stmt.finalbody else cost)
            _rewrite_returns(stmt.orelse, _FAR if stmt.finalbody else cost)
            for handler in stmt.handlers:
                _rewrite_returns(handler.body, _FAR if stmt.finalbody else cost + (5 if handler.name else 2))
            _rewrite_returns(stmt.finalbody, cost + 3)
        else:
            inner = cost + 2 if isinstance(stmt, ast.For) else _FAR if isinstance(
                stmt, (ast.AsyncFor, ast.With, ast.AsyncWith)) else cost
            _rewrite_returns(getattr(stmt, "body", None) or [], inner)
            _rewrite_returns(getattr(stmt, "orelse", None) or [], cost)
            for case in getattr(stmt, "cases", ()):
                _rewrite_returns(case.body, cost)
        following = body[index + 1] if index + 1 < len(body) else None
        if (isinstance(following, ast.Return) and isinstance(stmt, (ast.If, ast.For, ast.While))
                or type(stmt).__name__ == "Match") and isinstance(following, ast.Return) \
                and _return_size(following) + cost <= _COPIED:
            _close_last(stmt, following)


def _return_size(stmt: ast.Return) -> int:
    """Instructions of ``return <value>`` alone, as this interpreter compiles it (the names
    it reads count one instruction each, local or not)."""
    if stmt.value is None or isinstance(stmt.value, ast.Constant):
        return 1 if sys.version_info >= (3, 12) else 2  # RETURN_CONST; LOAD_CONST, RETURN_VALUE
    probe = ast.Module(body=[ast.AsyncFunctionDef(name="_", args=ast.arguments(
        posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]),
        body=[ast.Return(value=copy.deepcopy(stmt.value))], decorator_list=[], returns=None, type_comment=None,
        **({"type_params": []} if sys.version_info >= (3, 12) else {}))],  # type: ignore[arg-type]  # (3.12+)
        type_ignores=[])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = compile(ast.fix_missing_locations(probe), "<probe>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, TypeError):
        return _FAR
    code = next(const for const in module.co_consts if isinstance(const, CodeType))
    instructions = [ins.opname for ins in dis.get_instructions(code)]
    if "YIELD_VALUE" in instructions or "SEND" in instructions:
        return _FAR  # an await or yield: not a plain value
    first = instructions.index("RESUME") + 1 if "RESUME" in instructions else 0  # (3.11+)
    if "GEN_START" in instructions:  # (3.10: an async function's first instruction)
        first = instructions.index("GEN_START") + 1
    return sum(1 for name in instructions[first:] if name not in ("CACHE", "EXTENDED_ARG", "NOP"))


def _split(stmt: ast.Return) -> ast.stmt:
    value: ast.IfExp = stmt.value  # type: ignore[assignment]
    branches = []
    for part in (value.body, value.orelse):
        ret = ast.copy_location(ast.Return(value=part), stmt)
        branches.append(_split(ret) if isinstance(part, ast.IfExp) else ret)
    # The if at the expression's position: the interpreter gives the test's jump the
    # position of the statement (an if) or of the expression (a conditional expression).
    return ast.copy_location(ast.If(test=value.test, body=[branches[0]], orelse=[branches[1]]), value)


# -- the wrappers ------------------------------------------------------------------------------


def _entry_line(function: ast.FunctionDef | ast.AsyncFunctionDef, first: ast.stmt) -> int:
    """The line of the wrapper's entry code. Where ``bytecode.py`` can take the line off the
    compiled entry (see ``unline_with_entry``), the ``def`` line: it only has to differ from
    the body's first line while compiling, or the compiler drops a NOP of the body's first
    statement that carries that line as redundant (a ``try:`` on the first line then has no
    line event). Elsewhere the body's first line: one line event, which the body's first
    statement usually starts with."""
    return function.lineno if bytecode.LINES_EDITABLE else first.lineno


def _is_try_style(function: ast.FunctionDef | ast.AsyncFunctionDef, wrapper: ast.stmt) -> bool:
    index = function.body.index(wrapper)
    prologue = function.body[index - 1] if index else None
    return (isinstance(prologue, ast.Assign) and isinstance(prologue.value, ast.Call)
            and isinstance(prologue.value.func, ast.Attribute)
            and prologue.value.func.attr in ("start", "start_generator"))


def _plan_try(function: ast.FunctionDef | ast.AsyncFunctionDef, wrapper: ast.Try) -> _Plan:
    index = function.body.index(wrapper)
    prologue = function.body[index - 1]
    generator = prologue.value.func.attr == "start_generator"  # type: ignore[attr-defined]
    name = wrapper.finalbody[-1].value.args[0].value  # type: ignore[attr-defined]
    first = wrapper.body[0]
    return _Plan(function, name, wrapper.body, function.body[:index - 1], generator, "runtime",
                 _entry_line(function, first), first.col_offset)


def _plan_with(function: ast.FunctionDef | ast.AsyncFunctionDef, wrapper: ast.With) -> _Plan:
    """The with style's function: rebuilt like the try style's for the runtime (on the fly
    the two texts mean the same calls of the same tracer), in the with form for
    OpenTelemetry's tracer."""
    index = function.body.index(wrapper)
    call = wrapper.items[0].context_expr
    generator = call.func.attr in ("generator_span", "start_span")  # type: ignore[attr-defined]
    target = "otel" if call.func.attr.startswith("start_") else "runtime"  # type: ignore[attr-defined]
    first = wrapper.body[0]
    return _Plan(function, call.args[0].value, wrapper.body, function.body[:index], generator,  # type: ignore[attr-defined]
                 target, _entry_line(function, first), first.col_offset)


def _plan_one_liner(function: ast.FunctionDef | ast.AsyncFunctionDef, name: str, target: str) -> _Plan:
    body = function.body
    keep = body[:1] if _is_docstring(body[0]) and len(body) > 1 else []
    rest = body[len(keep):]
    return _Plan(function, name, rest, keep, _is_generator(function), target, _entry_line(function, rest[0]),
                 rest[0].col_offset)


class _StandIns:
    """Lines past the file's end, each standing in for a ``return`` statement's line while
    compiling (see :func:`_stand_in_returns`), and the real line of each."""

    def __init__(self, first: int) -> None:
        self.next = first
        self.lines: dict[int, int] = {}

    def take(self, real: int) -> int:
        line = self.next
        self.next += 1
        self.lines[line] = real
        return line


def _stand_in_returns(body: list[ast.stmt], stand_ins: _StandIns | None) -> None:
    """In the with form, each ``return`` of the function (not of a nested one) on a line of
    its own while compiling, or with its real line again (``stand_ins`` None).

    A ``return`` whose value ends on a later line than the statement starts (``return f(\n
    x)``) returns from the statement's line: the interpreter gives RETURN_VALUE the
    statement's line. Leaving a ``with`` block, the exit code and the RETURN_VALUE after it
    have no line (the ``with`` statement has none), so they take the value's last line, and
    the statement's line event is lost. The compiler puts a NOP with the statement's line
    after the value when the value starts on another line than the statement: on a stand-in
    line, every ``return`` gets that NOP, and ``bytecode.relabel`` gives it the real line
    back. (The try form's ``finally`` block gets that line from the statement already.)"""
    for stmt in body:
        if isinstance(stmt, ast.Return) and (stmt.lineno > 0 or hasattr(stmt, "_telemetry_line")):
            real = getattr(stmt, "_telemetry_line", None)
            if real is None:
                real = stmt._telemetry_line = (stmt.lineno, stmt.end_lineno)  # type: ignore[attr-defined]
            if stand_ins is None:
                stmt.lineno, stmt.end_lineno = real
            else:
                stmt.lineno = stmt.end_lineno = stand_ins.take(real[0])
            continue
        if isinstance(stmt, (*_FUNCTIONS, ast.ClassDef)):
            continue
        for field in ("body", "orelse", "finalbody"):
            _stand_in_returns(getattr(stmt, field, None) or [], stand_ins)
        for part in (*getattr(stmt, "handlers", ()), *getattr(stmt, "cases", ())):
            _stand_in_returns(part.body, stand_ins)


def _build(plan: _Plan, form: str, stand_ins: _StandIns) -> None:
    """Put (a copy of) the plan's body in the wrapper of ``form``: ``try`` (the start time
    kept on the value stack, see ``bytecode.hide_slot``) or ``with``. Built afresh each time:
    a function whose bytecode cannot be edited is compiled again in the with form."""
    line, col = plan.line, plan.col

    def telemetry(attribute: str, *args: ast.expr, owner: ast.expr | None = None) -> ast.Call:
        # ``owner.attribute(*args)`` (owner: ``_telemetry``). The owner and arguments at the
        # entry line (see _entry_line); the call itself without a line, so that no call event
        # of a tracer has a line the original lacks.
        owner = ast.Name("_telemetry", ast.Load()) if owner is None else owner
        return _place(ast.Call(_place(ast.Attribute(_place(owner, line, col), attribute, ast.Load()), line, col,
                                      subtree=False),
                               [_place(arg, line, col) for arg in args], []), -1, subtree=False)

    # The rewrites below change nested statement lists in place, the same way each time; a
    # nested function's plan holds its node, which must stay the one in this tree.
    body = list(plan.body)
    _rewrite_returns(body)
    body = _closed(body)
    _stand_in_returns(body, stand_ins if form == "with" and bytecode.LINES_EDITABLE else None)
    if form == "try":
        # The skipping entry's clock is the site's own (``SITE.start()``: the runtime keeps its
        # tracer's ``start`` there, a slot whose load specialises where ``_telemetry.start``,
        # a C function in the tracer's class, does not).
        clock = _place(ast.Expr(telemetry("start_generator") if plan.generator else
                                telemetry("start", owner=ast.Constant(plan.marker + bytecode.SITE_SUFFIX))),
                       line, col, subtree=False)
        if plan.generator:  # (a generator's calls are all timed: no skipping entry)
            start: ast.stmt = clock
            end: ast.stmt = _lineless(ast.Expr(ast.Call(ast.Attribute(ast.Name("_telemetry", ast.Load()), "end",
                                                                      ast.Load()),
                                                        [ast.Constant(plan.name), ast.Constant(plan.marker)], [])))
        else:
            start, end = _skipping(plan, clock, line, col)
        wrapper = _lineless(ast.Try(body=[], handlers=[], orelse=[], finalbody=[end]))
        wrapper.body = body
        plan.function.body = [*plan.keep, start, wrapper]
        return
    if plan.target == "otel":
        call = "start_span" if plan.generator else "start_as_current_span"
    else:
        call = "generator_span" if plan.generator else "span"
    # The with statement without a line (and its exit: Python 3.13 would give it the call's).
    with_ = _lineless(ast.With(items=[], body=[]))
    with_.items = [ast.withitem(telemetry(call, ast.Constant(plan.name)))]
    with_.body = body
    plan.function.body = [*plan.keep, with_]


def _skipping(plan: _Plan, start: ast.Expr, line: int, col: int) -> tuple[ast.stmt, ast.stmt]:
    """The try form's entry and exit for a call that a sampled site leaves untimed
    (``bytecode.hide_slot``, ``bind_sites``; the runtime's ``_end_site_agg`` tells why)::

        if SITE.skip:                   # SITE: the marker's site constant, bound on load
            SITE.skip -= 1              # the call, counted (no call in between: one step)
            SITE.off                    # None: the state, kept on the value stack
        else:
            SITE.start()                # the tracer's start(), kept in the site by the runtime
        try:
            ...body...
        finally:
            _telemetry.ends[TEST is None]("Q", STATE)    # TEST: a copy of the state

    ``ends`` maps False to ``end`` and True to a C function that does nothing: an untimed
    call reads no clock and calls no Python function of the runtime. The exit has no branch
    (a branch there would make the compiler give the function's returns the lines of other
    statements); on 3.11 ``bytecode.hide_slot`` puts one in after compiling, in the exit's
    own code units (``bytecode._jump_exits``): an untimed call then calls nothing at all.
    The exception path calls ``raises``, which is ``raised`` either way."""
    site = plan.marker + bytecode.SITE_SUFFIX

    def attribute(name: str, ctx: ast.expr_context) -> ast.Attribute:
        return ast.Attribute(ast.Constant(site), name, ctx)

    skip = _place(ast.If(attribute("skip", ast.Load()),
                         [ast.AugAssign(attribute("skip", ast.Store()), ast.Sub(), ast.Constant(1)),
                          ast.Expr(attribute("off", ast.Load()))],
                         []), line, col)
    skip.orelse = [start]
    test = ast.Compare(ast.Constant(plan.marker + bytecode.TEST_SUFFIX), [ast.Is()], [ast.Constant(None)])
    ends = ast.Subscript(ast.Attribute(ast.Name("_telemetry", ast.Load()), "ends", ast.Load()), test, ast.Load())
    return skip, _lineless(ast.Expr(ast.Call(ends, [ast.Constant(plan.name), ast.Constant(plan.marker)], [])))


def _finish(code: CodeType, markers: set[str], failed: set[str], lines: dict[int, int]) -> CodeType:
    """``code`` and its nested code objects with the bytecode edits of ``bytecode.py``: each
    try-form function's start time moved onto its value stack (the markers of those that
    could not be edited go into ``failed``), each with-form function's entry code without a
    line and its returns' stand-in ``lines`` replaced by the real ones."""
    consts = list(code.co_consts)
    changed = False
    if lines:
        code = bytecode.relabel(code, lines)
    for index, const in enumerate(consts):
        if isinstance(const, CodeType):
            new = _finish(const, markers, failed, lines)
            if new is not const:
                consts[index], changed = new, True
    if changed:
        code = code.replace(co_consts=tuple(consts))
    mine = [const for const in code.co_consts if isinstance(const, str) and const in markers]
    for marker in mine:
        try:
            return bytecode.hide_slot(code, marker)
        except bytecode.Unsupported:
            failed.add(marker)
    if not mine and code.co_flags & _OPTIMIZED:
        try:
            return bytecode.unline_with_entry(code)
        except bytecode.Unsupported:
            pass  # the entry keeps the body's first line
    return code


_OPTIMIZED = 0x1  # CO_OPTIMIZED: a function's code (not a module's or a class body's)


# -- one-line bodies ---------------------------------------------------------------------------


def _decorated_one_liners(tree: ast.Module, lines: list[str]) -> list[tuple[ast.FunctionDef | ast.AsyncFunctionDef,
                                                                           ast.expr, str, str]]:
    """Functions the text instruments with the decorator only because their body has no line
    of its own: (function, the decorator, its kind, the span name). Their bodies hold no
    block (a statement on the ``def`` line, or sharing the docstring's, is simple), so a
    wrapper cannot nest blocks past CPython's limit."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, _FUNCTIONS) or not node.decorator_list:
            continue
        decorator = node.decorator_list[-1]  # the engine puts its decorator next to the def
        if decorator.lineno != decorator.end_lineno or "_telemetry" not in lines[decorator.lineno - 1]:
            continue
        match = DECO_MARK.fullmatch(lines[decorator.lineno - 1].strip(" \t\x0c\r\n"))
        if match is None or any(isinstance(stmt, _COMPOUND) for stmt in node.body):
            continue
        found.append((node, decorator, match.group(1), match.group(2)))
    return found


_COMPOUND = (*_FUNCTIONS, ast.ClassDef, ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try,
             *(getattr(ast, name) for name in ("TryStar", "Match") if hasattr(ast, name)))


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _is_generator(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A yield in the function's own scope (not in a nested def, lambda or class)."""
    todo: list[ast.AST] = list(function.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, (*_FUNCTIONS, ast.Lambda, ast.ClassDef)):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return False


# -- the logging target's try form (not used on the fly by the plugin) -----------------------------


def _unline_try(function: ast.FunctionDef | ast.AsyncFunctionDef, wrapper: ast.Try) -> None:
    for node in (*wrapper.handlers, *wrapper.finalbody):
        _place(node, -1)
    wrapper.body = _closed(wrapper.body)
    # The way out on an exception: a handler on the def line re-raises, so that the frame
    # is left from a line (a debugger reads the line of a returning frame).
    outer = ast.Try(body=[wrapper], handlers=[ast.ExceptHandler(type=ast.Name("BaseException", ast.Load()),
                                                                name=None, body=[ast.Raise()])],
                    orelse=[], finalbody=[])
    for node in outer.handlers:
        _place(node, function.lineno)
    function.body[function.body.index(wrapper)] = ast.copy_location(outer, wrapper)
