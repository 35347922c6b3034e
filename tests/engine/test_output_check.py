"""The check of cached Python output (``languages/python_check.py``), both ways: every output
the engine writes passes it, with the engine's own line map, in every style and target; and
every output changed in a way that is not this tool's telemetry fails it.

The corpus is hand-written shapes (multi-line strings in bodies, backslash and bracket
continuations below the body's indentation, decorators, nested and async functions,
generators, ``__future__`` imports, CRLF, tabs, a BOM) and a sample of the standard library.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import pytest

from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.languages.python_check import check_output
from pytest_telemetry_inject.settings import Settings
from pytest_telemetry_inject.sourcefile import decode_source

SHAPES = {
    "strings.py": '''\
"""Module docstring."""
from __future__ import annotations

import textwrap


def query(table):
    """Docstring.

    More lines.
    """
    sql = """
SELECT *
FROM {table}
"""
    for _ in range(2):
        note = textwrap.dedent("""\\
            indented
            text
        """)
        sql += note
    return sql.format(table=table)


def continued(a, b):
    total = a + \\
b
    values = foo(
1, 2)
    return total, values


def foo(*args):
    return args
''',
    "shapes.py": '''\
import functools


def deco(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


class Shape:
    """A class."""

    @property
    def area(self):
        return 1

    @staticmethod
    def make(
        kind,
        size=2,
    ):
        # a comment first
        return Shape()

    async def fetch(self, x):
        if x:
            return x
        # a comment at the end, at the body's indentation


def gen(n):
    for i in range(n):
        yield i
    else:
        return


def early(xs):
    for x in xs:
        if x:
            return x
    # trailing comment
        # deeper trailing comment
''',
    "crlf.py": 'def f(x):\r\n    y = x + 1\r\n    return y\r\n\r\n\r\nclass C:\r\n    def m(self):\r\n        return 2\r\n',
    "tabs.py": 'def f(x):\n\tif x:\n\t\treturn 1\n\treturn 2\n\n\ndef g():\n\t"""Doc."""\n\treturn [\n1]\n',
    "bom.py": '\ufeff# -*- coding: utf-8 -*-\n"""Doc."""\n\n\ndef f():\n    return "é"\n',
    "sameline.py": '"""Doc."""\nfrom __future__ import annotations; import os\n\ndef f():\n    return os.sep\n',
}

STYLES = ("with", "try", "decorator")
TARGETS = ("runtime", "vendored", "otel", "logging")


def stdlib_sample(count: int) -> dict[str, str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py"))
    picked = files[:: max(1, len(files) // count)][:count]
    return {p.name: p.read_text(encoding="utf-8", errors="surrogateescape") for p in picked}


def outputs(sources: dict[str, str], style: str, target: str):
    """(name, original text, output text, instrumented (qualname, line), line map) of each
    file the engine changes, without any cache."""
    settings = Settings(style=style, target=target, use_cache=False)
    engine = Engine(settings)
    import_name = "pkg.telemetry_utils" if target == "vendored" else ""
    for name, text in sources.items():
        data = text.encode("utf-8", "surrogateescape")
        result = engine.instrument(data, name, import_name=import_name)
        if result.output is None:
            continue
        functions = [(f.qualname, f.line) for f in result.functions if f.status == "instrumented"]
        yield (name, decode_source(data).text, decode_source(result.output).text, functions,
               result.get_line_map(), import_name)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("style", STYLES)
def test_every_output_the_engine_writes_passes_with_its_line_map(style, target):
    sources = dict(SHAPES, **stdlib_sample(12))
    checked = 0
    for name, original, output, functions, line_map, import_name in outputs(sources, style, target):
        verdict = check_output(original, output, target=target, import_name=import_name, functions=functions)
        assert verdict.status == "ok", (name, verdict.reason)
        assert (verdict.original, verdict.shift) == (line_map.original, line_map.shift), name
        checked += 1
    assert checked >= 12


PAYLOAD = '__import__("os").system("true")'


def mutations(output: str, rng: random.Random):
    """Changes an attacker could make to an output: a payload line anywhere, a line
    dropped, duplicated or indented one step more or less, a span renamed."""
    lines = output.splitlines(keepends=True)
    for _ in range(12):
        index = rng.randrange(len(lines))
        indent = lines[index][: len(lines[index]) - len(lines[index].lstrip(" \t"))]
        yield "payload", "".join(lines[:index] + [indent + PAYLOAD + "\n"] + lines[index:])
        if lines[index].strip():
            yield "dropped", "".join(lines[:index] + lines[index + 1:])
            yield "duplicated", "".join(lines[:index + 1] + lines[index:])
            yield "indented", "".join(lines[:index] + ["    " + lines[index]] + lines[index + 1:])
            if lines[index].startswith("    "):
                yield "dedented", "".join(lines[:index] + [lines[index][4:]] + lines[index + 1:])
    for old in ("span(\"", "instrument(\"", "end(\"", "start_as_current_span(\""):
        if old in output:
            yield "renamed", output.replace(old, old + "X", 1)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("style", STYLES)
def test_an_output_changed_in_any_other_way_never_passes(style, target):
    rng = random.Random(f"{style}-{target}")
    tried = 0
    for name, original, output, functions, _line_map, import_name in outputs(SHAPES, style, target):
        for kind, changed in mutations(output, rng):
            if changed == output:
                continue
            verdict = check_output(original, changed, target=target, import_name=import_name, functions=functions)
            if verdict.status == "ok":
                # The one change that may pass: the indentation of a comment line (no program
                # changes with it).
                assert kind in ("indented", "dedented") and _comment_moved(output, changed), (name, kind)
            tried += 1
    assert tried > 100


def _comment_moved(before: str, after: str) -> bool:
    pairs = list(zip(before.splitlines(), after.splitlines()))
    changed = [(a, b) for a, b in pairs if a != b]
    return len(pairs) == len(before.splitlines()) == len(after.splitlines()) and len(changed) == 1 \
        and changed[0][0].strip() == changed[0][1].strip() and changed[0][0].lstrip().startswith("#")


def test_a_function_list_that_lies_fails():
    (name, original, output, functions, _map, _imp), *_ = outputs({"shapes.py": SHAPES["shapes.py"]}, "with", "runtime")
    lies = {
        "a function left out": functions[1:],
        "a function added": functions + [("nowhere", 1)],
        "a name changed": [("Shape.areaX" if q == "Shape.area" else q, line) for q, line in functions],
        "a line moved": [(q, line + 1 if q == "gen" else line) for q, line in functions],
    }
    for lie, listed in lies.items():
        assert check_output(original, output, target="runtime", import_name="", functions=listed).status == "corrupt", lie


def test_a_def_inside_a_string_is_not_a_function():
    """Test suites hold code in strings. A memo that claims a def line inside a string is a
    function, and wraps "its body" (indenting the string's lines and the real code after the
    string), is refused: where strings are is read from the top of the file, never from a
    place the memo names."""
    original = (
        'SOURCE = """\n'
        'def fake(x):\n'
        '    return x\n'
        '"""\n'
        '\n'
        '\n'
        'def real(n):\n'
        '    total = 0\n'
        '    for i in range(n):\n'
        '        total += i\n'
        '    return total\n'
    )
    header = "from pytest_telemetry_inject import runtime as _telemetry_runtime\n" \
             "_telemetry = _telemetry_runtime.tracer(__name__)\n"
    forged = (
        header
        + 'SOURCE = """\n'
        'def fake(x):\n'
        '    with _telemetry.span("fake"):\n'
        '        return x\n'
        '"""\n'
        '\n'
        '\n'
        'def real(n):\n'
        '    with _telemetry.span("real"):\n'
        '        total = 0\n'
        '        for i in range(n):\n'
        '            total += i\n'
        '        return total\n'
    )
    verdict = check_output(original, forged, target="runtime", import_name="",
                           functions=[("fake", 2), ("real", 7)])
    assert verdict.status == "corrupt" and "inside a string" in verdict.reason
