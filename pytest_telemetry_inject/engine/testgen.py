"""Generated pytest tests of insertion scripts.

One module per instrumented source file (``tests/<language>/<stem>_<key16>.cases`` in the
cache, ``engine/layout.py``) holds one test per script of that file, parametrized by the
function's qualname. Its ``SCRIPTS`` rows are ``formats.TestCase``'s.
Each test embeds the original function source and checks the script against it with
``pytest_telemetry_inject.testkit.ScriptCheck``: the output parses, stripping the telemetry
gives back the original (equal as syntax trees), the span name is the qualname, and
applying the script to its own output changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..formats import TestCase, read_cases
from .layout import CacheLayout


def test_module_name(path: str, key: str) -> str:
    """The name of the generated test module of the source file ``path`` (memo key ``key``)."""
    return CacheLayout.tests_name(path, key)


def render_test_module(*, path: str, language: str, cases: Sequence[TestCase]) -> str:
    """The module's text: prose, ``SCRIPTS`` (one ``TestCase`` row each) and the test."""
    rows = "\n".join(TestCase(*case).to_row() for case in cases)
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
    """The ``SCRIPTS`` rows of a generated test module in their order there, (script sha256,
    span name, origin, original source) each; None when the text holds no such list. (New
    readers take ``formats.read_cases``: named ``TestCase`` records.)"""
    cases = read_cases(text)
    return None if cases is None else [case.on_disk() for case in cases]
