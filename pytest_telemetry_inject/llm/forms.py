"""The telemetry forms of the Python templates: what a model is shown, and the only lines
accepted from it.

Taken from the templates themselves (each style's output on a small function of the same
kind, ``_probe``), so the prompt's examples (``prompts.telemetry_forms``) and the check of
an answer (``target_problem``, in ``refactorer``) never drift from what the engine writes
and strip recognises.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

from ..scriptlib import Edit, Indent, apply


def _is_generator(source: str) -> bool:
    text = "if 1:\n" + source if source[:1] in " \t" else source
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return "yield" in source
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not functions:
        return False
    outer = functions[0]
    stack: list[ast.AST] = list(outer.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return False


def _function_kind(source: str) -> tuple[bool, bool]:
    """(is a generator, is async) of a Python function's source."""
    text = "if 1:\n" + source if source[:1] in " \t" else source
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return "yield" in source, "async def" in source
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not functions:
        return False, False
    return _is_generator(source), isinstance(functions[0], ast.AsyncFunctionDef)


PROBE_NAME = "telemetry_inject_probe"


def _probe(target: str, generator: bool, is_async: bool) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """What each Python template writes for this target on a small function of the same kind:
    (style, the instrumented example, its inserted lines), span name PROBE_NAME. Taken from
    the templates themselves, so the forms accepted from a model never drift from them (not
    cached: a millisecond, next to the sandbox runs of every answer)."""
    from ..languages import get_language
    from ..scriptlib import Insert, InsertAfter
    from ..settings import STYLES, Settings

    python = get_language("python")
    keyword = "async def" if is_async else "def"
    last = "yield x" if generator else "return x"
    source = f"{keyword} {PROBE_NAME}(a):\n    x = a\n    {last}\n"
    found = []
    for style in STYLES:
        settings = Settings(style=style, target=target)
        try:
            parsed = python.parse(source, "probe.py", settings)
            record = parsed.functions[0]
            template = python.templates(record, settings)[0]
            edits = python.plan(template, record, parsed)
        except Exception:  # this style has no form for this kind of function
            continue
        lines = tuple(e.text.strip(" \t") for e in edits if isinstance(e, (Insert, InsertAfter)))
        found.append((style, apply(source, edits), lines))
    return tuple(found)


_PROBE_USES = re.compile(r'([".])' + PROBE_NAME + '"')


def _named(text: str, span_name: str) -> str:
    """``text`` (a probe's telemetry) naming ``span_name``: the span's name and, in the otel
    target's code attributes, the qualname after the module (``__name__ + ".NAME"``)."""
    return _PROBE_USES.sub(lambda match: f'{match.group(1)}{span_name}"', text)


def telemetry_examples(target: str, span_name: str, source: str) -> list[tuple[str, str]]:
    """(style, example) of every form the templates write for this target and kind of function."""
    generator, is_async = _function_kind(source)
    return [(style, _named(example, span_name))
            for style, example, _lines in _probe(target, generator, is_async)]


def target_problem(language: str, target: str, span_name: str, source: str, edits: Sequence[Edit]) -> str:
    """Why the telemetry an answer inserts is not what the configured target calls ('' when
    it is). Strip recognises every target's forms, so this is checked here: a runtime form in
    an OpenTelemetry file would fail only when the code runs, and a line that is no telemetry
    at all must not get in beside it."""
    if language != "python":
        from ..languages import get_language

        try:
            check = getattr(get_language(language), "target_problem", None)
        except KeyError:
            check = None
        return str(check(target, span_name, source, edits) or "") if check is not None else ""
    from ..scriptlib import Insert, InsertAfter

    generator, is_async = _function_kind(source)
    allowed = {_named(line, span_name)
               for _style, _example, lines in _probe(target, generator, is_async) for line in lines}
    for edit in edits:
        if isinstance(edit, (Insert, InsertAfter)):
            line = edit.text.strip(" \t")
            if line not in allowed:
                return (f"the inserted line {line[:80]!r} is not telemetry of the target {target!r} for this "
                        f"function; use one of: {'; '.join(sorted(allowed))}")
        elif not isinstance(edit, Indent):
            return "Python telemetry goes on lines of its own: do not insert text inside a line"
    return ""
