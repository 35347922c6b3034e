"""Function records from tree-sitter: qualnames, kinds, lines, what is skipped and why."""

from __future__ import annotations

import hashlib
import textwrap

from pytest_telemetry_inject.languages import get_language, language_for
from pytest_telemetry_inject.languages.python import (
    REASON_INSTRUMENTED,
    REASON_LAMBDA,
    REASON_OVERLOAD,
    REASON_TRIVIAL,
)
from pytest_telemetry_inject.settings import Settings

PYTHON = get_language("python")

SOURCE = textwrap.dedent('''
    """Doc."""
    import typing

    def top(a):
        return a

    class Outer:
        class Inner:
            def deep(self):
                return 1

        @property
        def prop(self):
            return 2

        @staticmethod
        def stat():
            return 3

        @classmethod
        def klass(cls):
            return cls

        async def coro(self):
            await self.other()

        async def agen(self):
            yield 1

        def gen(self):
            yield from range(3)

        def not_a_gen(self):
            def inner_gen():
                yield 1
            squares = (x * x for x in range(3))
            return inner_gen, squares, lambda: (yield)

    def maker():
        class Made:
            def method(self):
                return 4
        def helper():
            def deepest():
                return 5
            return deepest
        return Made, helper

    @typing.overload
    def over(x: int) -> int: ...

    def empty():
        """Only a docstring."""

    def ellipsis(): ...
''').lstrip("\n")


def records(text: str = SOURCE, **settings):
    return {r.qualname: r for r in PYTHON.parse(text, "mod.py", Settings(**settings)).functions}


def test_qualnames_follow_python() -> None:
    found = records()
    expected = {
        "top", "Outer.Inner.deep", "Outer.prop", "Outer.stat", "Outer.klass", "Outer.coro", "Outer.agen",
        "Outer.gen", "Outer.not_a_gen", "Outer.not_a_gen.<locals>.inner_gen",
        "Outer.not_a_gen.<locals>.<lambda>", "maker", "maker.<locals>.Made.method", "maker.<locals>.helper",
        "maker.<locals>.helper.<locals>.deepest", "over", "empty", "ellipsis",
    }
    assert set(found) == expected
    # The same names Python gives them:
    namespace: dict = {}
    exec(compile(SOURCE, "mod.py", "exec"), namespace)
    made, helper = namespace["maker"]()
    assert made.method.__qualname__ in found
    assert helper().__qualname__ in found
    assert namespace["Outer"].not_a_gen(None)[2].__qualname__ in found


def test_kinds() -> None:
    found = records()
    assert found["Outer.coro"].is_async and not found["Outer.coro"].is_generator
    assert found["Outer.agen"].is_async and found["Outer.agen"].is_generator
    assert found["Outer.gen"].is_generator
    # A yield in a nested function, a generator expression or a lambda is not this function's.
    assert not found["Outer.not_a_gen"].is_generator
    assert found["Outer.not_a_gen.<locals>.inner_gen"].is_generator
    assert found["Outer.prop"].is_method and found["Outer.prop"].decorators == ("property",)
    assert found["Outer.stat"].decorators == ("staticmethod",)
    assert not found["top"].is_method
    assert found["maker.<locals>.helper.<locals>.deepest"].nested_in == "maker.<locals>.helper"
    assert found["maker.<locals>.Made.method"].nested_in == "maker"


def test_skip_reasons_and_configurable_trivial_bodies() -> None:
    found = records()
    assert found["over"].skip_reason == REASON_OVERLOAD
    assert found["empty"].skip_reason == REASON_TRIVIAL
    assert found["ellipsis"].skip_reason == REASON_TRIVIAL
    assert found["Outer.not_a_gen.<locals>.<lambda>"].skip_reason == REASON_LAMBDA
    assert found["top"].skip_reason is None
    assert records(skip_trivial=False)["empty"].skip_reason is None


def test_lines_bytes_and_hash() -> None:
    found = records()
    prop = found["Outer.prop"]
    lines = SOURCE.splitlines(keepends=True)
    assert lines[prop.start_line - 1].strip() == "@property"
    assert lines[prop.def_line - 1].strip() == "def prop(self):"
    assert lines[prop.anchor_line - 1].strip() == "return 2"
    assert prop.indent == "    " and prop.body_indent == "        " and prop.unit == "    "
    source = "".join(lines[prop.start_line - 1:prop.end_line])
    assert prop.sha256 == hashlib.sha256(source.encode()).hexdigest()
    data = SOURCE.encode()
    assert data[prop.start_byte:prop.end_byte].decode().startswith("@property")


def test_one_line_bodies_and_docstring_anchors() -> None:
    text = 'def a(): return 1\ndef b():\n    """Doc."""; return 2\ndef c(\n    x,\n):\n    """Doc."""\n    return x\n'
    found = records(text)
    assert found["a"].one_line and found["a"].anchor_line == 0
    assert found["b"].anchor_line == 0  # the statement shares the docstring's line
    assert found["c"].anchor_line == 8 and not found["c"].one_line


def test_already_instrumented_functions_are_recognised() -> None:
    text = textwrap.dedent('''
        from pytest_telemetry_inject import runtime as _telemetry_runtime
        _telemetry = _telemetry_runtime.tracer(__name__)

        def a():
            with _telemetry.span("a"):
                return 1

        @_telemetry.instrument("b")
        def b():
            return 2
    ''')
    parsed = PYTHON.parse(text, "mod.py", Settings())
    assert {r.qualname: r.skip_reason for r in parsed.functions} == {"a": REASON_INSTRUMENTED, "b": REASON_INSTRUMENTED}
    assert parsed.header_present == "runtime"


def test_language_by_extension_and_shebang() -> None:
    assert language_for("a/b.py").name == "python"
    assert language_for("tool", b"#!/usr/bin/env python3\nprint()\n").name == "python"
    assert language_for("tool", b"#!/usr/bin/python3.11 -u\n").name == "python"
    assert language_for("tool", b"#!/bin/sh\n") is None
    assert language_for("notes.txt", b"#!/usr/bin/env python\n") is None
