"""The on-the-fly compiler: instrumented code runs with the original function's positions.

A tracer (coverage, a debugger) sees the same line events, in the same order, from the
instrumented function as from the original, and a traceback the same lines. The one
difference, by design: the try form leaves on an exception from the ``def`` line (one line
event there, and the return event's line), where the original leaves from the line that
raised."""

from __future__ import annotations

import sys
import traceback
import types
from pathlib import Path

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.engine.compiler import compile_mapped
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.settings import Settings

SOURCE = (Path(__file__).parent / "branch_shapes.py").read_text()

CALLS = [("tail_if", (0,)), ("tail_if", (1,)), ("first_loop", ([1],)), ("first_loop", ([0, 0],)),
         ("gen", (2,)), ("nested", (0,)), ("nested", (2,)), ("fails", (1,)), ("fails", (0,)),
         ("while_first", (2,)), ("decorated", ([0],)), ("decorated", ([0, 1],))]


def _namespace(code: types.CodeType) -> dict:
    namespace: dict = {"__name__": "traced"}
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


@pytest.mark.parametrize("style, target", [("try", "runtime"), ("with", "runtime"), ("with", "otel")])
def test_a_tracer_sees_the_original_functions_line_events(style: str, target: str) -> None:
    """(The OpenTelemetry target wraps generators in ``start_span``, other functions in
    ``start_as_current_span``: the plugin's ``telemetry_target = otel``.)"""
    result = Engine(Settings(style=style, target=target), cache=None).instrument(
        SOURCE.encode(), "traced.py", import_name="")
    assert result.status == "instrumented"
    runtime.reset()
    instrumented = _namespace(compile_mapped(result.output.decode(), result.get_line_map(), "traced.py"))
    plain = _namespace(compile(SOURCE, "traced.py", "exec", dont_inherit=True))
    raised = 0
    for name, args in CALLS:
        expected = _events(plain[name], args)
        events, outcome = expected
        if style == "try" and events[-2][0] == "exception":  # left on an exception
            raised += 1
            line = plain[name].__code__.co_firstlineno + (name == "decorated")  # the def line
            expected = (events[:-1] + [("line", line), ("return", line)], outcome)
        assert _events(instrumented[name], args) == expected, (name, args)
    assert raised == (2 if style == "try" else 0)
    if target != "runtime":
        return
    rows = [row for row in runtime.snapshot() if row["module"] == "traced"]
    assert {row["name"]: row["count"] for row in rows} == {
        "tail_if": 2, "first_loop": 2, "gen": 1, "nested": 2, "fails": 2, "while_first": 1, "deco": 1, "decorated": 2}
    # The exceptions that left a function are counted, once; the one nested() caught is not.
    assert {row["name"]: row["exceptions"] for row in rows if row["errors"]} == {
        "fails": {"ValueError": 1}, "decorated": {"KeyError": 1}}
