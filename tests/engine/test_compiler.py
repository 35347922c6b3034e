"""The on-the-fly compiler: instrumented code runs with the original function's positions,
keeps no local of its own and adds no frame; the bytecode edits behind it are checked by
their own analysis. (The differential test over many shapes and the standard library is
test_line_events.py.)"""

from __future__ import annotations

import dis
import inspect
import marshal
import sys
import sysconfig
import textwrap
import traceback
import types
import warnings
from pathlib import Path

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.engine import bytecode
from pytest_telemetry_inject.engine.compiler import compile_mapped
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.settings import Settings

SOURCE = (Path(__file__).parent / "branch_shapes.py").read_text()

CALLS = [("tail_if", (0,)), ("tail_if", (1,)), ("first_loop", ([1],)), ("first_loop", ([0, 0],)),
         ("gen", (2,)), ("nested", (0,)), ("nested", (2,)), ("fails", (1,)), ("fails", (0,)),
         ("while_first", (2,)), ("decorated", ([0],)), ("decorated", ([0, 1],))]
FORMS = [("try", "runtime"), ("with", "runtime"), ("with", "otel")]


def instrument(source: str, style: str = "try", target: str = "runtime", name: str = "traced",
               compile_style: str | None = None) -> tuple[dict, dict, str]:
    """(the original's namespace, the instrumented one's, the instrumented text)."""
    source = textwrap.dedent(source)
    result = Engine(Settings(style=style, target=target), cache=None).instrument(source.encode(), f"{name}.py",
                                                                                   import_name="")
    assert result.status == "instrumented", result.reason
    text = result.output.decode()
    code = compile_mapped(text, result.get_line_map(), f"{name}.py", style=compile_style or style)
    return _namespace(compile(source, f"{name}.py", "exec", dont_inherit=True), name), _namespace(code, name), text


def _namespace(code: types.CodeType, name: str) -> dict:
    namespace: dict = {"__name__": name}
    exec(code, namespace)
    return namespace


def _events(func, args: tuple) -> tuple[list, object]:
    """The (event, line) pairs of the function's own frames, and its result or error's lines."""
    seen: list = []
    name = func.__name__

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        if frame.f_code.co_name != name:
            return None
        seen.append((event, frame.f_lineno))
        return tracer

    sys.settrace(tracer)
    try:
        result = func(*args)
        if isinstance(result, types.GeneratorType):
            result = list(result)
    except Exception as exc:  # noqa: BLE001 - the lines of its traceback are compared
        result = [(entry.name, entry.lineno) for entry in traceback.extract_tb(exc.__traceback__)]
    finally:
        sys.settrace(None)
    return seen, result


@pytest.mark.parametrize("style, target", FORMS)
def test_a_tracer_sees_the_original_functions_line_events(style: str, target: str) -> None:
    """(The OpenTelemetry target wraps generators in ``start_span``, other functions in
    ``start_as_current_span``: the plugin's ``telemetry_target = otel``.) The frame is left
    from the line that raised, as the original is, in every form."""
    runtime.reset()
    plain, instrumented, _text = instrument(SOURCE, style, target)
    for name, args in CALLS:
        assert _events(instrumented[name], args) == _events(plain[name], args), (name, args)
    if target != "runtime":
        return
    rows = [row for row in runtime.snapshot() if row["module"] == "traced"]
    assert {row["name"]: row["count"] for row in rows} == {
        "tail_if": 2, "first_loop": 2, "gen": 1, "nested": 2, "fails": 2, "while_first": 1, "deco": 1, "decorated": 2}
    # The exceptions that left a function are counted, once; the one nested() caught is not.
    assert {row["name"]: row["exceptions"] for row in rows if row["errors"]} == {
        "fails": {"ValueError": 1}, "decorated": {"KeyError": 1}}


LOCALS = '''
    import inspect


    class Options:
        def __init__(self, a, b):
            self.a, self.b = a, b


    def make(a=1, b=2):
        kwargs = dict(locals())
        return Options(**kwargs)


    def names(x):
        y = x
        return dir()


    def gen(x):
        y = x
        yield inspect.currentframe().f_locals.copy()
        yield y
'''


@pytest.mark.parametrize("style", ["try", "with"])
def test_the_function_sees_no_local_of_the_wrapper(style: str) -> None:
    """The text's try form keeps its start time in ``_telemetry_t``; on the fly it stays on
    the frame's value stack: nothing the function can read of its own frame changes."""
    plain, instrumented, text = instrument(LOCALS, style)
    assert ("_telemetry_t = _telemetry.start()" in text) == (style == "try")  # (the text's form)
    options = instrumented["make"]()
    assert (options.a, options.b) == (1, 2)
    assert instrumented["names"](1) == plain["names"](1) == ["x", "y"]
    for name in ("make", "names", "gen", "Options"):
        func = instrumented[name].__init__ if name == "Options" else instrumented[name]
        original = plain[name].__init__ if name == "Options" else plain[name]
        assert func.__code__.co_varnames == original.__code__.co_varnames
        assert func.__code__.co_nlocals == original.__code__.co_nlocals
    generator = instrumented["gen"](5)
    assert next(generator) == {"x": 5, "y": 5}
    assert inspect.getgeneratorlocals(generator) == {"x": 5, "y": 5}
    assert list(generator) == [5]
    if bytecode.SUPPORTED:  # the try form, compiled with the start time on the stack
        assert "start" in instrumented["make"].__code__.co_names
    rows = {row["name"]: row["count"] for row in runtime.snapshot() if row["module"] == "traced"}
    assert rows["make"] >= 1 and rows["gen"] >= 1


RAISES = '''
    def fails(x):
        y = x
        if y:
            raise KeyError(
                y)
        return y


    def gen(x):
        yield x
        yield x + 1
'''


@pytest.mark.parametrize("style, target", FORMS)
def test_the_frame_is_left_from_the_line_that_raised(style: str, target: str) -> None:
    """A debugger reads the line a frame returns from; a traceback keeps the frame. The
    original's frame leaves from the raising line; so does the instrumented one (the try
    form's handler re-raises restoring the raising instruction, as a with block's does)."""
    plain, instrumented, _text = instrument(RAISES, style, target)
    for namespace in (plain, instrumented):
        with pytest.raises(KeyError) as info:
            namespace["fails"](1)
        tb = info.value.__traceback__
        while tb.tb_frame.f_code.co_name != "fails":
            tb = tb.tb_next
        assert (tb.tb_lineno, tb.tb_frame.f_lineno) == (5, 5)
        generator = namespace["gen"](1)
        next(generator)
        with pytest.raises(ValueError) as thrown:
            generator.throw(ValueError("in"))
        frame = thrown.value.__traceback__.tb_next.tb_frame
        assert (frame.f_code.co_name, frame.f_lineno) == ("gen", 11)


ONE_LINERS = '''
    import sys
    import warnings


    def old(): warnings.warn("old", DeprecationWarning, stacklevel=2)


    def caller(): return sys._getframe(1).f_code.co_name


    def documented():
        """Doc."""; return sys._getframe(0).f_code.co_name


    def twice(x): return x * 2
'''


@pytest.mark.parametrize("style", ["try", "with"])
def test_one_line_functions_get_no_frame_on_the_fly(style: str) -> None:
    """The text gives a body on the ``def`` line the decorator (it has no line of its own to
    wrap); on the fly the compiler rewrites the tree, so the function runs in its own frame
    as the original does."""
    _plain, instrumented, text = instrument(ONE_LINERS, style)
    assert text.count('@_telemetry.instrument("') == 4  # the text keeps its decorator

    def call_old():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            instrumented["old"]()  # the warning points here
        return seen

    seen = call_old()
    assert [(Path(w.filename).name, w.lineno) for w in seen] == [
        (Path(__file__).name, call_old.__code__.co_firstlineno + 3)]
    assert instrumented["caller"]() == "test_one_line_functions_get_no_frame_on_the_fly"
    assert instrumented["documented"]() == "documented"
    assert instrumented["twice"].__code__.co_name == "twice"
    assert not hasattr(instrumented["twice"], "__wrapped__")
    rows = {row["name"]: row["count"] for row in runtime.snapshot() if row["module"] == "traced"}
    assert rows["old"] >= 1 and rows["caller"] >= 1 and not rows.get("twice")


def test_the_decorator_style_keeps_its_decorator_on_the_fly() -> None:
    _plain, instrumented, _text = instrument(ONE_LINERS, "try", compile_style="decorator")
    assert instrumented["twice"].__code__.co_name == "wrapper"  # the runtime's decorator
    assert instrumented["twice"](2) == 4


@pytest.mark.skipif(not bytecode.SUPPORTED, reason="the try form's edit needs Python 3.11 to 3.13")
def test_a_function_the_edit_does_not_fit_gets_the_with_form() -> None:
    """The exception path calls ``raised``, a name of the code's own: past what one byte of
    its instruction indexes, the edit is refused and the function compiled in the with form,
    which keeps no local either."""
    names = [f"n{i}" for i in range(300)]
    source = "".join(f"{name} = {i}\n" for i, name in enumerate(names))
    source += "\n\ndef big(x):\n    total = " + " + ".join(names) + "\n    if x:\n        raise KeyError(x)\n    return total\n"
    source += "\n\ndef small(x):\n    return x\n"
    plain, instrumented, _text = instrument(source, "try")
    big, small = instrumented["big"].__code__, instrumented["small"].__code__
    assert "span" in big.co_names and "start" not in big.co_names  # the with form
    assert "start" in small.co_names  # the others keep the try form
    assert big.co_varnames == plain["big"].__code__.co_varnames
    for args in ((0,), (1,)):
        assert _events(instrumented["big"], args) == _events(plain["big"], args)
    rows = {row["name"]: row for row in runtime.snapshot() if row["module"] == "traced"}
    assert rows["big"]["count"] == 2 and rows["big"]["exceptions"] == {"KeyError": 1}


def test_the_compiled_code_marshals() -> None:
    """The import hook caches compiled code with marshal."""
    _plain, instrumented, text = instrument(SOURCE)
    result = Engine(Settings(style="try", target="runtime"), cache=None).instrument(SOURCE.encode(), "traced.py",
                                                                                      import_name="")
    code = compile_mapped(result.output.decode(), result.get_line_map(), "traced.py", bindable=True)
    namespace = _namespace(bytecode.bind_sites(marshal.loads(marshal.dumps(code)), lambda name, code: None), "traced")
    assert list(namespace["gen"](3)) == [0, 1, 2]
    with pytest.raises(ValueError):
        namespace["fails"](1)


# -- the bytecode edits' own parts, on every code object of real modules -------------------------

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _code_objects(relative: str) -> list[types.CodeType]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        todo = [compile((STDLIB / relative).read_text(encoding="utf-8"), relative, "exec", dont_inherit=True)]
    found = []
    while todo:
        code = todo.pop()
        found.append(code)
        todo.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    return found


MODULES = ["_pydecimal.py", "difflib.py", "email/_header_value_parser.py", "asyncio/base_events.py", "typing.py",
           "argparse.py", "inspect.py"]


@pytest.mark.skipif(not bytecode.LINES_EDITABLE, reason="no line table writer for this Python")
def test_line_tables_encode_back() -> None:
    """The line-table writer gives back every position of thousands of compiled functions."""
    count = 0
    for relative in MODULES:
        for code in _code_objects(relative):
            assert bytecode.positions(bytecode.with_positions(code, bytecode.positions(code))) == \
                bytecode.positions(code), code
            count += 1
    assert count > 1000


@pytest.mark.skipif(not bytecode.SUPPORTED, reason="exception tables and the edit: Python 3.11 to 3.13")
def test_exception_tables_and_stack_depths_match_the_compilers() -> None:
    """The exception-table writer gives back the compiler's tables, and the stack analysis
    the edit relies on agrees with the compiler's own (no function needs more stack than the
    compiler reserved, every handler is entered at one depth)."""
    for relative in MODULES:
        for code in _code_objects(relative):
            entries = bytecode.read_table(code)
            assert bytecode.write_table(entries) == code.co_exceptiontable
            instructions = [ins for ins in dis.get_instructions(code) if ins.opname != "CACHE"]
            depths = bytecode.stack_depths(code, instructions, entries)
            assert max(depths.values()) <= code.co_stacksize, code
