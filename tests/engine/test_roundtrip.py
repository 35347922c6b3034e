"""Instrument, strip, instrument again: on tricky sources, for every style and target.

Each case checks the engine's promises: the output compiles, stripping it gives back the
original byte for byte, a second run changes nothing, every span is named after its
function, and (for the runtime target) the code still behaves the same and reports calls.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.languages import get_language
from pytest_telemetry_inject.settings import STYLES, TARGETS, Settings

PYTHON = get_language("python")


def src(text: str) -> bytes:
    return textwrap.dedent(text).lstrip("\n").encode()


CASES: dict[str, bytes] = {
    "basics": src('''
        """Module docstring."""
        from __future__ import annotations

        import functools


        def add(a, b):
            """Add two numbers."""
            total = a + b
            return total


        class Shape:
            """A shape."""

            def __init__(self, side):
                self.side = side

            @property
            def area(self):
                return self.side * self.side

            @staticmethod
            def unit():
                return Shape(1)

            @classmethod
            def of(cls, side):
                return cls(side)

            def scaled(self, k):
                def scale(x):
                    return x * k
                return Shape(scale(self.side))


        def countdown(n):
            while n:
                yield n
                n -= 1


        async def fetch(x):
            return x + 1


        async def agen(n):
            for i in range(n):
                yield i


        def fails():
            raise ValueError("boom")


        def trivial():
            pass


        square = lambda x: x * x
    '''),
    "strings": src('''
        def doc_and_strings():
            """First line.

        Second line at column zero.
            """
            text = """a
        b at column zero
            c"""
            joined = ("one"
        "two at column zero")
            cont = "back\\
        slash"
            f = f"""{text}
        {joined}"""
            return text, joined, cont, f
    '''),
    "one_liners": src('''
        def one(): return 1
        def two(x): y = x; return y
        class K:
            def m(self): return "m"
    '''),
    "docstring_shares_line": src('''
        def f():
            """Doc."""; x = 1
            return x
    '''),
    "trailing_comments": src('''
        def f(x):
            if x:
                y = 1
                # deeper comment after the last statement of the block
            else:
                y = 2
                    # an even deeper comment
            return y
                # a trailing comment deeper than the body
        # a comment at column zero

        def g():
            return 2
    '''),
    "scopes": src('''
        def counter():
            count = 0
            def bump():
                nonlocal count
                count += 1
                return count
            return bump

        TOTAL = 0

        def add_total(n):
            global TOTAL
            TOTAL += n
            return TOTAL

        def factory():
            class Local:
                def method(self):
                    return super().__repr__() is not None
            return Local()
    '''),
    "opt_out": src('''
        import typing
        from pytest_telemetry_inject.runtime import no_telemetry

        @typing.overload
        def p(x: int) -> int: ...
        @typing.overload
        def p(x: str) -> str: ...
        def p(x):
            return x

        def secret():  # telemetry: skip
            return 1

        @no_telemetry
        def quiet():
            return 2
    '''),
    "no_final_newline": b"def f():\n    return 1\n\ndef g():\n    return 2",
    "crlf": src('''
        """Doc."""

        def f(a):
            s = """x
        y"""
            return a, s

        class C:
            def m(self):
                return 3
    ''').replace(b"\n", b"\r\n"),
    "bom": b"\xef\xbb\xbf" + src('''
        def hello():
            return "h\\u00e9llo"
    '''),
    "latin1": "# -*- coding: latin-1 -*-\n\ndef caf\u00e9():\n    return 'cr\u00e8me'\n".encode("latin-1"),
    "tabs": b"def f(x):\n\tif x:\n\t\treturn 1\n\treturn 2\n\nclass T:\n\tdef m(self):\n\t\treturn 'm'\n",
    "formfeed": b"def f():\n    return 1\n\x0c\ndef g():\n    x = 1\n\x0c\n    return x\n",
    "conditional_defs": src('''
        import sys
        if sys.platform == "win32":
            def plat():
                return "win"
        else:
            def plat():
                return "other"
        try:
            import json
        except ImportError:
            def dumps(x):
                return str(x)
        else:
            def dumps(x):
                return json.dumps(x)
    '''),
}

# The logging target wraps a body in try/finally and has no decorator form: a body that
# shares its line with the signature or the docstring cannot take it.
NO_LOGGING_FORM = {"one_liners", "docstring_shares_line"}
RUNNABLE = {"basics", "strings", "one_liners", "docstring_shares_line", "trailing_comments", "scopes",
            "opt_out", "no_final_newline", "crlf", "bom", "latin1", "tabs", "formfeed", "conditional_defs"}


def instrument(data: bytes, style: str, target: str, name: str = "mod.py"):
    engine = Engine(Settings(style=style, target=target), cache=None)
    return engine.instrument(data, name, import_name="telemetry_utils")


def strip(data: bytes) -> bytes:
    result = Engine(Settings(), cache=None).strip(data, "mod.py")
    return data if result.output is None else result.output


def load(tmp_path, name: str, data: bytes):
    path = tmp_path / f"{name}.py"
    path.write_bytes(data)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_roundtrip(case: str, style: str, target: str) -> None:
    data = CASES[case]
    result = instrument(data, style, target)
    if target == "logging" and case in NO_LOGGING_FORM:
        assert result.output is None and {f.status for f in result.functions} == {"failed"}
        return
    assert result.status == "instrumented", (result.status, result.reason, list(result.functions))
    output = result.output
    compile(output, "mod.py", "exec", dont_inherit=True)
    assert strip(output) == data
    again = instrument(output, style, target)
    assert again.output is None, "a second run changed the file"
    instrumented = [f for f in result.functions if f.status == "instrumented"]
    assert instrumented
    spans = PYTHON.strip(output.decode(_encoding(data)).lstrip("\ufeff")).spans
    assert sorted(name for _line, name in spans) == sorted(f.qualname for f in instrumented)


def _encoding(data: bytes) -> str:
    return "latin-1" if b"latin-1" in data[:40] else "utf-8"


def test_preserves_line_endings_bom_and_encoding() -> None:
    crlf = instrument(CASES["crlf"], "with", "runtime").output
    assert crlf.count(b"\r\n") == crlf.count(b"\n"), "every line keeps its CRLF"
    bom = instrument(CASES["bom"], "with", "runtime").output
    assert bom.startswith(b"\xef\xbb\xbf") and bom.count(b"\xef\xbb\xbf") == 1
    latin1 = instrument(CASES["latin1"], "with", "runtime").output
    assert latin1.startswith(b"# -*- coding: latin-1 -*-\n")
    assert "cr\u00e8me".encode("latin-1") in latin1
    tabs = instrument(CASES["tabs"], "with", "runtime").output.decode()
    assert "\twith _telemetry.span(\"f\"):\n\t\tif x:\n\t\t\treturn 1" in tabs


def test_lines_inside_strings_are_never_reindented() -> None:
    output = instrument(CASES["strings"], "with", "runtime").output.decode()
    for line in ("Second line at column zero.\n", "b at column zero\n", 'slash"\n', "{joined}\"\"\"\n"):
        assert "\n" + line in output, f"{line!r} moved"
    # A line that starts a new string of an implicit concatenation is not inside a string.
    # (it started at column 0, so it gets one indentation unit there).
    assert '\n    "two at column zero")\n' in output


def test_docstring_and_module_header_placement() -> None:
    output = instrument(CASES["basics"], "with", "runtime").output.decode()
    lines = output.splitlines()
    assert lines[0] == '"""Module docstring."""'
    assert lines[1] == "from __future__ import annotations"
    assert lines[3] == "from pytest_telemetry_inject import runtime as _telemetry_runtime"
    assert lines[4] == "_telemetry = _telemetry_runtime.tracer(__name__)"
    assert '    """Add two numbers."""\n    with _telemetry.span("add"):\n        total = a + b' in output


def test_qualnames_and_kinds_of_span() -> None:
    output = instrument(CASES["basics"], "with", "runtime").output.decode()
    assert 'with _telemetry.span("Shape.scaled.<locals>.scale"):' in output
    assert 'with _telemetry.generator_span("countdown"):' in output
    assert 'with _telemetry.generator_span("agen"):' in output
    assert 'with _telemetry.span("fetch"):' in output
    decorated = instrument(CASES["basics"], "decorator", "runtime").output.decode()
    assert '    @property\n    @_telemetry.instrument("Shape.area")\n    def area(self):' in decorated
    otel = instrument(CASES["basics"], "with", "otel").output.decode()
    assert ('with _telemetry.start_as_current_span("add", attributes={"code.function.name": __name__ + ".add", '
            '"code.file.path": __file__}):') in otel
    assert 'with _telemetry.start_span("countdown", attributes={"code.function.name": __name__ + ".countdown", ' in otel


def test_fallback_to_the_other_style_and_reasons() -> None:
    result = instrument(CASES["one_liners"], "with", "runtime")
    templates = {f.qualname: f.template for f in result.functions}
    assert templates == {"one": "python.decorator.runtime/1", "two": "python.decorator.runtime/1",
                         "K.m": "python.decorator.runtime/1"}
    logging = instrument(CASES["one_liners"], "with", "logging")
    assert logging.status == "unchanged"
    assert {f.status for f in logging.functions} == {"failed"}
    assert all("body is on the def line" in f.reason and "no decorator form" in f.reason
               for f in logging.functions)
    shared = instrument(CASES["docstring_shares_line"], "with", "runtime")
    assert [f.template for f in shared.functions] == ["python.decorator.runtime/1"]
    # The style asked for did not fit: the outcome says why beside the template that did.
    assert [f.reason for f in result.functions] == [
        "in place of python.with.runtime: the body is on the def line; python.try.runtime: the body is on the def line"] * 3
    assert [f.reason for f in shared.functions] == [
        "in place of python.with.runtime: no statement after the docstring on a line of its own; "
        "python.try.runtime: no statement after the docstring on a line of its own"]


def test_a_body_ending_the_file_without_a_line_ending_says_why_it_got_another_style() -> None:
    data = b"def f(x):\n    y = x + 1\n    return y"
    result = instrument(data, "try", "runtime")
    (outcome,) = result.functions
    assert outcome.template == "python.with.runtime/1"
    assert outcome.reason == "in place of python.try.runtime: the body ends the file without a line ending"
    ending = instrument(data + b"\n", "try", "runtime")
    assert [(f.template, f.reason) for f in ending.functions] == [("python.try.runtime/1", "")]
    # A style the target has no form of at all is no news about the function.
    otel = instrument(data + b"\n", "try", "otel")
    assert [(f.template, f.reason) for f in otel.functions] == [("python.with.otel/2", "")]


def test_skip_reasons() -> None:
    reasons = {(f.qualname, f.status): f.reason for f in instrument(CASES["opt_out"], "with", "runtime").functions}
    assert reasons[("p", "skipped")] == "typing.overload stub"
    assert reasons[("secret", "skipped")] == "opted out (# telemetry: skip)"
    assert reasons[("quiet", "skipped")] == "opted out (@no_telemetry)"
    assert ("p", "instrumented") in reasons
    basics = {f.qualname: f.reason for f in instrument(CASES["basics"], "with", "runtime").functions
              if f.status == "skipped"}
    assert basics == {"trivial": "trivial body (only a docstring, pass or ...)", "<lambda>": "lambda"}
    keep_trivial = Engine(Settings(skip_trivial=False), cache=None).instrument(CASES["basics"], "mod.py")
    assert "trivial" in {f.qualname for f in keep_trivial.functions if f.status == "instrumented"}


def test_too_deep_for_a_with_block_falls_back_to_the_decorator() -> None:
    # CPython compiles 20 nested blocks and refuses 21: a with block would make the 21st.
    body = "".join("    " * (i + 1) + f"for i{i} in range(1):\n" for i in range(20))
    data = ("def deep():\n" + body + "    " * 21 + "return 1\n").encode()
    compile(data, "deep.py", "exec")
    result = instrument(data, "with", "runtime")
    assert [f.template for f in result.functions] == ["python.decorator.runtime/1"]
    compile(result.output, "deep.py", "exec")


def test_file_opt_out_and_name_clash() -> None:
    skipped = instrument(b"# telemetry: skip-file\ndef f():\n    return 1\n", "with", "runtime")
    assert skipped.status == "skipped" and "skip-file" in skipped.reason
    clash = instrument(b"_telemetry = 1\ndef f():\n    return _telemetry\n", "with", "runtime")
    assert clash.status == "skipped" and "_telemetry" in clash.reason


def test_other_target_header_is_refused() -> None:
    data = instrument(CASES["basics"], "with", "otel").output
    result = instrument(data, "with", "runtime")
    assert result.status == "skipped" and "target 'otel'" in result.reason


@pytest.mark.parametrize("data, reason", [
    (b"def f(:\n    pass\n", "missing ')' at line 1"),
    (b"def f():\n    x = (1 +\n\ndef g(): pass\n", "at line"),
    (b"\x00\x01binary", "binary file"),
    (b"x = '\xff'\n", "cannot decode as utf-8"),
    (b"# coding: nope-42\nx = 1\n", "unknown source encoding"),
    (b"print 'python 2'\ndef f():\n    return 1\n", None),
])
def test_bad_input_is_left_alone_with_one_line_reason(data: bytes, reason: str | None) -> None:
    result = instrument(data, "with", "runtime")
    assert result.output is None
    assert result.status in ("skipped", "unchanged")
    assert "\n" not in result.reason
    if reason is not None:
        assert reason in result.reason


# What to run in each case (an expression over the module `m`), for the behaviour test.
CALLS = {
    "basics": ["m.add(2, 3)", "m.Shape(3).area", "m.Shape.unit().side", "m.Shape.of(4).side",
               "m.Shape(2).scaled(5).side", "list(m.countdown(3))", "asyncio.run(m.fetch(1))",
               "asyncio.run(_collect(m.agen(3)))", "_raises(m.fails)", "m.trivial()", "m.square(4)"],
    "strings": ["m.doc_and_strings()", "m.doc_and_strings.__doc__"],
    "one_liners": ["m.one()", "m.two(5)", "m.K().m()"],
    "docstring_shares_line": ["m.f()", "m.f.__doc__"],
    "trailing_comments": ["m.f(0)", "m.f(1)", "m.g()"],
    "scopes": ["[m.counter()() for _ in range(2)]", "(lambda b: (b(), b()))(m.counter())",
               "m.add_total(2) and m.add_total(3)", "m.factory().method()"],
    "opt_out": ["m.p(3)", "m.secret()", "m.quiet()"],
    "no_final_newline": ["m.f()", "m.g()"],
    "crlf": ["m.f(1)", "m.C().m()"],
    "bom": ["m.hello()"],
    "latin1": ["getattr(m, 'caf\u00e9')()"],
    "tabs": ["m.f(0)", "m.f(1)", "m.T().m()"],
    "formfeed": ["m.f()", "m.g()"],
    "conditional_defs": ["m.plat()", "m.dumps([1])"],
}


async def _collect(agen):
    return [item async for item in agen]


def _raises(func):
    try:
        func()
    except Exception as exc:  # noqa: BLE001 - the type and message are compared
        return type(exc).__name__, str(exc)
    return None


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("case", sorted(CALLS))
def test_instrumented_code_behaves_the_same_and_reports(tmp_path, case: str, style: str) -> None:
    import asyncio

    data = CASES[case]
    original = load(tmp_path, f"orig_{case}_{style}", data)
    runtime.reset()
    module_name = f"inst_{case}_{style}"
    instrumented = load(tmp_path, module_name, instrument(data, style, "runtime").output)
    scope = {"asyncio": asyncio, "_collect": _collect, "_raises": _raises}
    for expression in CALLS[case]:
        expected = eval(expression, dict(scope, m=original))
        assert eval(expression, dict(scope, m=instrumented)) == expected, expression
    called = {row["name"] for row in runtime.snapshot() if row["module"] == module_name and row["count"]}
    assert called, "the runtime saw no call"
    if case == "basics":
        assert {"add", "Shape.area", "Shape.scaled.<locals>.scale", "countdown", "fetch", "agen",
                "fails"} <= called
        errors = {row["name"]: row["errors"] for row in runtime.snapshot() if row["module"] == module_name}
        assert errors["fails"] == 1 and errors["add"] == 0


@pytest.mark.parametrize("style", STYLES)
def test_adding_a_function_to_an_instrumented_file(style: str) -> None:
    first = instrument(CASES["basics"], style, "runtime").output
    grown = first + b"\n\ndef added(x):\n    return x + 1\n"
    result = instrument(grown, style, "runtime")
    assert [f.qualname for f in result.functions if f.status == "instrumented"] == ["added"]
    assert result.output.startswith(first), "nothing else changed"
    assert strip(result.output) == CASES["basics"] + b"\n\ndef added(x):\n    return x + 1\n"


def test_renamed_and_moved_functions_get_their_span_names_updated() -> None:
    source = src('''
        def old():
            return 1

        class Home:
            def method(self):
                return 2
    ''')
    instrumented = instrument(source, "with", "runtime").output
    renamed = instrumented.replace(b"def old():", b"def new():").replace(b"class Home:", b"class Away:")
    result = instrument(renamed, "with", "runtime")
    assert sorted(f.qualname for f in result.functions if f.status == "instrumented") == ["Away.method", "new"]
    text = result.output.decode()
    assert 'span("new")' in text and 'span("Away.method")' in text
    assert 'span("old")' not in text and 'span("Home.method")' not in text
    assert strip(result.output) == source.replace(b"def old():", b"def new():").replace(b"class Home:", b"class Away:")
    assert instrument(result.output, "with", "runtime").output is None


def test_strip_only_some_functions_keeps_the_header() -> None:
    output = instrument(CASES["basics"], "decorator", "runtime").output.decode()
    add_line = next(i for i, line in enumerate(output.splitlines(), 1) if line.startswith("def add("))
    partly = PYTHON.strip(output, only={add_line})
    assert [name for _line, name in partly.spans] == ["add"]
    assert "_telemetry_runtime.tracer" in partly.text and '@_telemetry.instrument("add")' not in partly.text
    assert '@_telemetry.instrument("countdown")' in partly.text
