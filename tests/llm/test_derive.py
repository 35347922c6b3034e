"""engine.derive: a script's output back into edits; only additions are accepted."""

from __future__ import annotations

import pytest

from pytest_telemetry_inject.engine.derive import derive_edits
from pytest_telemetry_inject.engine.reconstruct import reconstruct
from pytest_telemetry_inject.languages import get_language
from pytest_telemetry_inject.llm.forms import target_problem
from pytest_telemetry_inject.scriptlib import Indent, Insert, InsertAfter, InsertText, apply
from pytest_telemetry_inject.settings import STYLES, TARGETS, Settings

SAMPLE = '''"""A module."""

import functools


def plain(a, b):
    """Add."""
    total = a + b
    return total


class Shop:
    @property
    def name(self):
        return self._name

    def report(self, rows):
        text = """header
   keep this indentation
"""
        for row in rows:

            text += str(row)
        return text

    def gen(self):
        yield 1
        yield 2


def outer(x):
    def inner(y):
        return x + y
    return inner(1)


def crlf(a):\r
    return a\r
'''


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("style", STYLES)
def test_every_template_output_derives_back_to_equivalent_edits(style: str, target: str) -> None:
    settings = Settings(style=style, target=target)
    language = get_language("python")
    parsed = language.parse(SAMPLE, "sample.py", settings)
    checked = 0
    for record in parsed.functions:
        if record.skip_reason:
            continue
        source = record.source(parsed.lines)
        for template in language.templates(record, settings):
            try:
                edits = language.plan(template, record, parsed)
            except Exception:
                continue
            output = apply(source, edits)
            derived = derive_edits(source, output, keep=[record.relative(k) for k in record.keep])
            assert derived is not None, (record.qualname, template.id)
            assert apply(source, derived) == output
            # What the refactorer accepts of a model covers every form the templates write.
            assert target_problem("python", target, record.qualname, source, derived) == "", template.id
            checked += 1
    assert checked >= 6


def test_derived_edits_compose_like_the_templates_in_a_whole_file() -> None:
    """Nested functions: the derived edits of each function, composed innermost first, give
    the same file as the templates' own edits (the engine's composition is unchanged)."""
    settings = Settings()
    language = get_language("python")
    parsed = language.parse(SAMPLE, "sample.py", settings)
    by_template, by_derive = [], []
    for record in parsed.functions:
        if record.skip_reason:
            continue
        edits = language.plan(language.templates(record, settings)[0], record, parsed)
        source = record.source(parsed.lines)
        derived = derive_edits(source, apply(source, edits), keep=[record.relative(k) for k in record.keep])
        assert derived is not None
        by_template.append((record, edits))
        by_derive.append((record, derived))
    expected = reconstruct(parsed.lines, by_template, ["import x as _telemetry_runtime"], parsed.header_line)
    got = reconstruct(parsed.lines, by_derive, ["import x as _telemetry_runtime"], parsed.header_line)
    assert got.text == expected.text
    assert got.line_map == expected.line_map
    assert language.validate_output(parsed, got.text, got.new_rows) is None


def test_the_kinds_of_addition() -> None:
    assert derive_edits("a = 1\n", "a = 1\n") == []
    assert derive_edits("x = 1\n", "x = 1\ny = 2\n") == [InsertAfter(1, "y = 2")]
    assert derive_edits("x = 1\n", "# hi\nx = 1\n") == [Insert(1, "# hi")]
    assert derive_edits("f(b)\n", "f(tel(), b)\n") == [InsertText(1, 2, "tel(), ")]
    edits = derive_edits("def f():\n\treturn 1\n", "def f():\n\twith s():\n\t\treturn 1\n")
    assert edits == [Indent(2, 2, "\t", "", ()), Insert(2, "\twith s():")]
    # Braces: text inside lines only, no line moves.
    go = "func f() {\n\treturn 1\n}\n"
    assert derive_edits(go, 'func f() { defer span("f")()\n\treturn 1\n}\n', language="go") == [
        InsertText(1, 10, ' defer span("f")()')]


@pytest.mark.parametrize(("source", "output", "why"), [
    ("a = 1\nb = 2\n", "a = 1\nb = 3\n", "a changed character"),
    ("a = 1\nb = 2\n", "a = 1\n", "a removed line"),
    ("a = 1\nb = 2\n", "b = 2\na = 1\n", "reordered lines"),
    ("a = 1\n", "a = 1 \n", None),  # trailing text is an addition: accepted
    ("a = 1\r\n", "a = 1\n", "a changed line ending"),
    ("a = 1\n", "a = 1\r\nb\r\n", "a changed line ending"),
    ('x = """\nfoo\n"""\n', 'x = """\n    foo\n"""\n', "indentation inside a string"),
    ('x = """\nfoo\n"""\n', 'x = """\nfoo bar\n"""\n', "text inside a string"),
    ("def f():\n    return g(a, b)\n", "def f():\n    return g(a)\n", "a removed argument"),
    ("def f():\n    pass\n", "def f():\n  pass\n", "less indentation"),
])
def test_anything_but_additions_is_refused(source: str, output: str, why: str | None) -> None:
    derived = derive_edits(source, output)
    if why is None:
        assert derived is not None and apply(source, derived) == output
    else:
        assert derived is None, why


def test_an_inserted_copy_of_an_original_line_is_still_an_insertion() -> None:
    source = "a()\nb()\n"
    output = "a()\na()\nb()\nb()\n"
    derived = derive_edits(source, output)
    assert derived is not None and apply(source, derived) == output
    assert all(isinstance(e, (Insert, InsertAfter)) for e in derived)


def test_engine_uses_derived_edits_in_the_cache_format() -> None:
    """The pipeline stores an LLM fix's edits in the cache's edits field: they survive JSON."""
    from pytest_telemetry_inject.engine.scripts import edits_from_json, edits_to_json

    source = "def f(a):\n    return a\n"
    output = 'def f(a):\n    with _telemetry.span("f"):\n        return a\n'
    derived = derive_edits(source, output)
    assert derived is not None
    assert apply(source, edits_from_json(edits_to_json(derived))) == output
