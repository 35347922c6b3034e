"""Compile instrumented source as if it were the original: every position the interpreter
records (tracebacks, coverage's line events, debuggers, ``inspect``) is the original one.

The instrumented text is parsed, each node's line is mapped through the line map (inserted
lines take the line they were inserted before) and its columns moved back by what the
indentation added, then the tree is compiled under the original file name.
"""

from __future__ import annotations

import ast
from types import CodeType

from .reconstruct import LineMap


def compile_mapped(text: str, line_map: LineMap, filename: str) -> CodeType:
    tree = ast.parse(text, filename)
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
    return compile(tree, filename, "exec", dont_inherit=True)
