"""The script helper library: edits, their composition, and the scripts built on them."""

from __future__ import annotations

import textwrap

import pytest

from pytest_telemetry_inject.engine.reconstruct import LineMap, reconstruct
from pytest_telemetry_inject.engine.scripts import check_security, load_transform, render_script
from pytest_telemetry_inject.languages import get_language
from pytest_telemetry_inject.scriptlib import (
    ScriptMismatch,
    apply,
    indent,
    insert,
    insert_after,
    sha256,
    split_lines,
)
from pytest_telemetry_inject.settings import Settings


def test_split_lines_counts_rows_like_tree_sitter() -> None:
    assert split_lines("a\nb\r\nc") == ["a\n", "b\r\n", "c"]
    assert split_lines("a\x0cb\n") == ["a\x0cb\n"]  # a form feed is no line break
    assert split_lines("") == []


def test_indent_keeps_blank_lines_and_string_lines() -> None:
    source = "def f():\n    x = '''a\nb'''\n\n    return x\n"
    out = apply(source, [indent(2, 5, "    ", "    ", keep=[3]), insert(2, "    with s:")])
    assert out == "def f():\n    with s:\n        x = '''a\nb'''\n\n        return x\n"


def test_inserts_keep_script_order_and_line_endings() -> None:
    source = "a\r\nb\r\n"
    out = apply(source, [insert(2, "one"), insert(2, "two"), insert_after(2, "three")])
    assert out == "a\r\none\r\ntwo\r\nb\r\nthree\r\n"


def test_apply_refuses_another_source_and_is_idempotent() -> None:
    source = "def f():\n    return 1\n"
    edits = [indent(2, 2, "    ", "    "), insert(2, "    with s:")]
    out = apply(source, edits)
    kwargs = {"source_sha256": sha256(source), "output_sha256": sha256(out)}
    assert apply(source, edits, **kwargs) == out
    assert apply(out, edits, **kwargs) == out
    with pytest.raises(ScriptMismatch):
        apply(source + "# changed\n", edits, **kwargs)


def test_bad_edits_are_refused() -> None:
    with pytest.raises(ValueError):
        indent(3, 2, "    ")
    with pytest.raises(ValueError):
        indent(1, 2, "x")
    with pytest.raises(ValueError):
        insert(1, "two\nlines")
    with pytest.raises(ScriptMismatch):
        apply("a\n", [insert(5, "x")])


def test_nested_functions_compose_like_their_scripts() -> None:
    """Composing outer and inner edits in the file gives, for the inner function, its own
    script's output indented by what encloses it; and a line map to the original lines."""
    text = textwrap.dedent('''
        def outer():
            def inner():
                return 1
            return inner
    ''').lstrip()
    python = get_language("python")
    parsed = python.parse(text, "m.py", Settings(target="runtime"))
    template = python.templates(parsed.functions[0], Settings(target="runtime"))[0]
    plans = [(r, python.plan(template, r, parsed)) for r in parsed.functions]
    rebuilt = reconstruct(parsed.lines, plans)
    assert rebuilt.text == textwrap.dedent('''
        def outer():
            with _telemetry.span("outer"):
                def inner():
                    with _telemetry.span("outer.<locals>.inner"):
                        return 1
                return inner
    ''').lstrip()
    inner_record, inner_edits = plans[1]
    alone = apply(inner_record.source(parsed.lines), inner_edits)
    assert textwrap.indent(alone, "    ") in rebuilt.text
    # new line -> original line (a with-line maps to the line it was inserted before)
    assert rebuilt.line_map.original == (1, 2, 2, 3, 3, 4)
    assert rebuilt.line_map.shift == (0, 0, 4, 0, 8, 4)
    assert rebuilt.new_rows == (0, 2, 4, 5)
    assert LineMap.from_segments(rebuilt.line_map.to_segments()) == rebuilt.line_map


def test_rendered_scripts_pass_the_allowlist_and_run() -> None:
    source = "def f():\n    return 1\n"
    edits = [indent(2, 2, "    ", "    ", keep=[]), insert(2, '    with _telemetry.span("f"):'),
             insert_after(2, "    # after")]
    out = apply(source, edits)
    script = render_script(language="python", span_name="f", template="python.with.runtime/1",
                           source_sha256=sha256(source), output_sha256=sha256(out), edits=edits)
    check_security(script)
    transform = load_transform(script)
    assert transform(source) == out
    assert transform(out) == out


def test_insert_text_composes_on_one_line() -> None:
    """Brace languages insert inside existing lines: positions refer to the original line,
    and the texts of nested functions on the same line compose in either order."""
    from pytest_telemetry_inject.scriptlib import InsertText, apply_edits, insert_text

    line = ["function a() { function b() { return 1; } return b(); }\n"]
    outer = [insert_text(1, 14, " A;"), insert_text(1, 54, "Z; ")]
    inner = [insert_text(1, 29, " B;"), insert_text(1, 40, "Y; ")]
    expected = "function a() { A; function b() { B; return 1; Y; } return b(); Z; }\n"
    for order in ((inner, outer), (outer, inner)):
        work = list(line)
        inline: dict = {}
        for edits in order:
            apply_edits(work, edits, 0, None, None, None, inline)
        assert work == [expected]
    assert apply(line[0], outer + inner) == expected
    with pytest.raises(ScriptMismatch):
        apply("x\n", [InsertText(1, 5, "!")])
    script = render_script(language="javascript", span_name="a", template="t/1", source_sha256=sha256(line[0]),
                           output_sha256=sha256(expected), edits=outer + inner)
    check_security(script)
    assert load_transform(script)(line[0]) == expected
