"""Compile instrumented source as if it were the original: every position the interpreter
records (tracebacks, coverage's line and arc events, debuggers, ``inspect``) is the original one.

The instrumented text is parsed, each node's line is mapped through the line map (inserted
lines take the line they were inserted before) and its columns moved back by what the
indentation added, then the tree is compiled under the original file name.

The wrapper's own code gets no line where it runs as the function returns (the try form's
``finally`` block, the with form's exit), so a tracer sees the same line events as from the
original function: mapped to a line, that code would emit a line event there as the
function returns, and coverage would record the jump from the function's last line to that
line instead of to the function's exit (``if done: return`` at the end of a function would
show its exit branch as missed). The interpreter gives such code the line of the statement
that returns, as it does for its own implicit ``return None``: for that, the try form's body
gets an explicit ``return`` without a line at its end, where the original fell off it.

On the way out by an exception, the try form's handler and ``finally`` block run without a
line too, inside one more ``try`` whose handler (on the ``def`` line) re-raises: the frame is
left from a line (a debugger reads the line of a returning frame), the ``def`` line, which
the import has run. The with form leaves from the line that raised, as the interpreter does
for every ``with`` block. The wrappers are the ones the Python language's strip finds.
"""

from __future__ import annotations

import ast
from types import CodeType

from ..languages.python import wrappers
from ..scriptlib import split_lines
from .reconstruct import LineMap


def compile_mapped(text: str, line_map: LineMap, filename: str) -> CodeType:
    tree = ast.parse(text, filename)
    wrapped = wrappers(tree, split_lines(text))  # found by the text's rows: before mapping
    original, shift = line_map.original, line_map.shift
    last = len(original)
    for node in ast.walk(tree):
        lineno = getattr(node, "lineno", None)
        if lineno is None:
            continue
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
    for function, wrapper in wrapped:
        if isinstance(wrapper, ast.With):
            # No line for the with statement and its call (Python 3.13 gives the exit the
            # call's): entering keeps the line of the call's name and arguments, the first
            # line of the body; the exit has none.
            _place(wrapper, -1, subtree=False)
            _place(wrapper.items[0].context_expr, -1, subtree=False)
        elif isinstance(wrapper, ast.Try):
            _unline_try(function, wrapper)
    return compile(tree, filename, "exec", dont_inherit=True)


# -- the wrappers' code, without a line where it runs on the way out ---------------------------


def _place(node: ast.AST, line: int, *, subtree: bool = True) -> None:
    """The node (and its subtree) at ``line``, column 0; -1: no line and no columns."""
    for each in ast.walk(node) if subtree else (node,):
        if "lineno" in each._attributes:
            each.lineno = each.end_lineno = line
            each.col_offset = each.end_col_offset = -1 if line < 0 else 0


def _unline_try(function: ast.FunctionDef | ast.AsyncFunctionDef, wrapper: ast.Try) -> None:
    for node in (*wrapper.handlers, *wrapper.finalbody):
        _place(node, -1)
    ending = ast.Return(value=None)
    _place(ending, -1)
    wrapper.body.append(ending)  # unreachable where the body cannot fall off its end
    # The way out on an exception: a handler on the def line re-raises.
    outer = ast.Try(body=[wrapper], handlers=[ast.ExceptHandler(type=ast.Name("BaseException", ast.Load()),
                                                                name=None, body=[ast.Raise()])],
                    orelse=[], finalbody=[])
    for node in outer.handlers:
        _place(node, function.lineno)
    function.body[function.body.index(wrapper)] = ast.copy_location(outer, wrapper)
