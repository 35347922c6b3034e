"""Generated pytest tests of insertion scripts.

One module per instrumented source file (``tests/<language>/test_<stem>_<key>.py`` in the
cache) holds one test per script of that file, parametrized by the function's qualname.
Each test embeds the original function source and checks the script against it with
``pytest_telemetry_inject.testkit.ScriptCheck``: the output parses, stripping the telemetry
gives back the original (equal as syntax trees), the span name is the qualname, and
applying the script to its own output changes nothing.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")


def test_module_name(path: str, key: str) -> str:
    stem = path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = _UNSAFE.sub("_", stem).strip("_")[:40] or "source"
    return f"{stem}_{key[:16]}.cases"


def render_test_module(*, path: str, language: str,
                       cases: Sequence[tuple[str, str, str, str]]) -> str:
    """``cases``: (script sha256, span name, original function source, origin)."""
    rows = "\n".join(f"    ({sha!r}, {name!r}, {origin!r},\n     {original!r})," for sha, name, original, origin in cases)
    return (
        f'"""Generated tests of the insertion scripts of {path} ({language}).\n'
        "\n"
        "One test per script: its output parses, stripping the telemetry gives back the original\n"
        "function (equal as syntax trees), the span name is the function's qualname, and applying\n"
        "the script to its own output changes nothing.\n"
        '"""\n'
        "\n"
        "import pytest\n"
        "\n"
        "from pytest_telemetry_inject.testkit import ScriptCheck\n"
        "\n"
        f"LANGUAGE = {language!r}\n"
        "\n"
        "# (script sha256, span name, origin, original function source)\n"
        "SCRIPTS = [\n"
        f"{rows}\n"
        "]\n"
        "\n"
        "\n"
        '@pytest.mark.parametrize(("script", "span_name", "origin", "original"), SCRIPTS,\n'
        "                         ids=[case[1] for case in SCRIPTS])\n"
        "def test_insertion_script(script, span_name, origin, original):\n"
        "    check = ScriptCheck.for_test_file(__file__, script, language=LANGUAGE, span_name=span_name,\n"
        "                                      original=original, origin=origin)\n"
        "    check.assert_all()\n"
    )


def parse_cases(text: str) -> list[tuple[str, str, str, str]] | None:
    """The ``SCRIPTS`` rows of a generated test module, (script sha256, span name, origin,
    original source) each, read as a literal: the module is data to the plugin, never
    imported. None when the text holds no such list."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["SCRIPTS"]:
            try:
                rows = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
            if isinstance(rows, list) and all(isinstance(row, tuple) and len(row) == 4
                                              and all(isinstance(v, str) for v in row)
                                              and row[2] in ("template", "llm") for row in rows):
                return rows
            return None
    return None
