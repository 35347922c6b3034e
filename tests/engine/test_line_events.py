"""Differential test of the on-the-fly compiler: every function, compiled from its
instrumented text with the original positions (``compile_mapped``), gives a tracer exactly the
events the original gives, in both styles.

Two corpora, each compiled twice from the same text (plainly, and instrumented then mapped):

- ``line_shapes.py``: hand-written shapes (every way out of a function, loops with ``else``,
  ``try``/``finally``, ``with``, ``match``, generators and async generators driven to
  exhaustion, return, throw and close, exceptions raised and caught at every level, one-line
  bodies, the reproductions of the coverage and ``locals()`` reports);
- modules of the standard library that are pure enough to call with made-up arguments (no
  I/O, no sleeping; a call that runs past an event budget is left out), each function and
  method called with arguments drawn from a fixed pool by a seeded generator.

Recorded for each call: every ``sys.settrace`` event of the module's frames (``call``,
``line``, ``return``, ``exception`` with the exception's class, and the frame's line), and on
Python 3.12+ every ``sys.monitoring`` event of its code (lines, branches and jumps as lines,
starts, returns, yields, unwinds, throws, raises, re-raises, handled exceptions, stop
iterations, calls), then the call's outcome (the value, or the exception and its traceback's
lines). The instrumented run must give the same lists.

What the wrapper itself does is left out of the monitoring comparison, and only that: its
calls of the runtime (a method of the module's tracer or of a span: the telemetry itself; on
the way out they run with the line of the statement before them, as the interpreter's own
``return None`` does), a call or a handled or re-raised exception at an instruction without a
line (the wrapper's entry and exception path: none of the original's instructions lacks a
line), and a ``PY_UNWIND`` is compared by the frame's line (what a tool reads) rather than by
the offset of the instruction that unwinds (the wrapper's handler re-raises, restoring the
raising instruction as the frame's last one, as a ``with`` block's does). So are the ``JUMP``
events that are not a loop's back edge (forward in the code, or to a later line): they tell
where the compiler placed code, not which lines ran (the ``LINE`` and ``BRANCH`` events do).
CPython copies a small exit block (the ``return None`` a function falls off into, a short
``return x, y``) into each jump that reaches it, so the original often returns without
jumping where the instrumented code, whose exit also ends its span and is never that small,
jumps to one copy; ``compile_mapped`` copies such returns in the tree where that changes
nothing else (``if``, ``match``, loops, conditional expressions), not into an ``except``
clause, whose jump to the return after it stays. coverage.py measures with ``LINE``,
``PY_RETURN`` and ``BRANCH`` events; ``bdb`` (pdb) reads jumps back to a loop's head as its
line events, and those are compared.

Run under each interpreter to cover (``/root/.pyenv/versions/3.1x``, with the package
installed in a virtualenv of that interpreter): the ``sys.monitoring`` half runs on 3.12+.
The full standard-library corpus is marked ``slow``; a subset always runs.
"""

from __future__ import annotations

import copy
import inspect
import math
import random
import re
import sys
import sysconfig
import traceback
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.engine.compiler import compile_mapped
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.settings import Settings

HERE = Path(__file__).parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
MONITORING = hasattr(sys, "monitoring")
BUDGET = 20_000  # settrace events per call; a call that runs longer is left out of the corpus
# (style, target): the plugin's two styles for the runtime, and OpenTelemetry's tracer, which
# the with form calls (the form every function gets where the try form's bytecode cannot be
# edited: Python 3.10, or a function the edit does not fit)
STYLES = ["try", "with", "with-otel"]


# -- compiling a module both ways ----------------------------------------------------------------


def compile_both(source: str, filename: str, style: str) -> tuple[types.CodeType, types.CodeType]:
    """(plain code, instrumented code) of a module's source."""
    style, _, target = style.partition("-")
    if target == "otel":
        pytest.importorskip("opentelemetry.trace")
    result = Engine(Settings(style=style, target=target or "runtime"), cache=None).instrument(
        source.encode(), filename, import_name="")
    assert result.output is not None, result.reason
    plain = compile(source, filename, "exec", dont_inherit=True)
    instrumented = compile_mapped(result.output.decode(), result.get_line_map(), filename, style=style)
    return plain, instrumented


def load(code: types.CodeType, name: str, package: str | None = None) -> dict:
    """The namespace of a module run from ``code`` (in ``sys.modules`` while it runs: some
    modules look themselves up there, ``enum.global_enum`` for one)."""
    module = types.ModuleType(name)
    module.__package__ = package
    sys.modules[name] = module
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(code, module.__dict__)
    finally:
        del sys.modules[name]
    return module.__dict__


# -- recording ---------------------------------------------------------------------------------


ADDRESS = re.compile(r"0x[0-9a-f]+|(?<=id=)[0-9]+")


class OverBudget(BaseException):
    """A call ran past BUDGET events: it is left out of the corpus."""


def summary(value: Any, depth: int = 0) -> Any:
    """What a call returned, comparable across two runs (no identities, no addresses)."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else value
    if isinstance(value, str):
        # (an object's default repr in a string: the address differs between the runs)
        value = ADDRESS.sub("0x?", value)
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return value if not isinstance(value, (str, bytes)) or len(value) < 200 else (type(value).__name__, len(value))
    if depth < 3 and isinstance(value, (list, tuple)):
        return type(value).__name__, [summary(item, depth + 1) for item in value[:20]]
    if depth < 3 and isinstance(value, dict):
        return "dict", sorted((repr(k)[:40], summary(v, depth + 1)) for k, v in list(value.items())[:20])
    return type(value).__name__


def outcome(thunk: Callable[[], Any], filename: str) -> Any:
    try:
        return "returned", summary(thunk())
    except OverBudget:
        raise
    except BaseException as exc:  # noqa: BLE001 - compared: the class and the traceback's lines
        lines = [(entry.name, entry.lineno) for entry in traceback.extract_tb(exc.__traceback__)
                 if entry.filename == filename]
        return "raised", type(exc).__name__, lines


def settrace_events(thunk: Callable[[], Any], filename: str) -> tuple[list, Any]:
    events: list = []

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        if frame.f_code.co_filename != filename:
            return None
        if len(events) >= BUDGET:
            raise OverBudget
        extra = arg[0].__name__ if event == "exception" else None
        events.append((event, frame.f_code.co_name, frame.f_lineno, extra))
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = outcome(thunk, filename)
    finally:
        sys.settrace(old)
    return events, result


def monitoring_events(thunk: Callable[[], Any], filename: str) -> tuple[list, Any]:
    mon = sys.monitoring  # type: ignore[attr-defined]
    tool = next(i for i in range(6) if mon.get_tool(i) is None)
    mon.use_tool_id(tool, "telemetry line events test")
    events: list = []
    lines_of: dict = {}

    def line_at(code: types.CodeType, offset: int) -> int | None:
        table = lines_of.get(code)
        if table is None:
            table = lines_of[code] = {o: line for start, end, line in code.co_lines() for o in range(start, end, 2)}
        return table.get(offset)

    def mine(code: types.CodeType) -> bool:
        return code.co_filename == filename

    E = mon.events
    names = {value: name for name, value in vars(E).items() if name.isupper() and isinstance(value, int)}

    def on_offset(event: int) -> Callable:
        def callback(code, offset, *rest):  # type: ignore[no-untyped-def]
            if not mine(code):
                return mon.DISABLE if event in (E.PY_START, E.PY_RESUME, E.PY_RETURN, E.PY_YIELD) else None
            line = line_at(code, offset)
            if event == E.PY_UNWIND:
                line = sys._getframe(1).f_lineno  # the frame's line, as a tool reads it
            elif line is None and event in (E.CALL, E.C_RETURN, E.C_RAISE, E.EXCEPTION_HANDLED, E.RERAISE):
                return None  # the wrapper's own code (see the module's docstring)
            elif event in (E.CALL, E.C_RETURN, E.C_RAISE) and the_runtimes(rest[0]):
                return None
            detail = None
            if rest and event in (E.RAISE, E.RERAISE, E.EXCEPTION_HANDLED, E.PY_UNWIND, E.PY_THROW, E.STOP_ITERATION):
                detail = type(rest[0]).__name__
            elif rest and event in (E.CALL, E.C_RETURN, E.C_RAISE):
                detail = getattr(rest[0], "__qualname__", type(rest[0]).__name__)
            events.append((names[event], code.co_name, line, detail))
            if len(events) >= BUDGET:
                raise OverBudget
            return None
        return callback

    def on_line(code, line):  # type: ignore[no-untyped-def]
        if not mine(code):
            return mon.DISABLE
        events.append(("LINE", code.co_name, line, None))
        return None

    def on_jump(event: int) -> Callable:
        def callback(code, source, destination):  # type: ignore[no-untyped-def]
            if not mine(code):
                return mon.DISABLE
            lines = line_at(code, source), line_at(code, destination)
            if event == E.JUMP and (destination > source or None not in lines and lines[1] > lines[0]):
                return None  # not a loop's back edge: the layout (see the module's docstring)
            if lines != (None, None):  # (the wrapper's exception path: no line at either end)
                events.append((names[event], code.co_name, *lines))
            return None
        return callback

    wanted = [E.PY_START, E.PY_RESUME, E.PY_RETURN, E.PY_YIELD, E.PY_UNWIND, E.PY_THROW, E.RAISE, E.RERAISE,
              E.EXCEPTION_HANDLED, E.STOP_ITERATION, E.CALL, E.C_RETURN, E.C_RAISE]
    jumps = [getattr(E, name) for name in ("JUMP", "BRANCH", "BRANCH_LEFT", "BRANCH_RIGHT") if hasattr(E, name)]
    for event in wanted:
        mon.register_callback(tool, event, on_offset(event))
    mon.register_callback(tool, E.LINE, on_line)
    for event in jumps:
        mon.register_callback(tool, event, on_jump(event))
    mask = E.LINE
    for event in wanted + jumps:
        mask |= event
    mon.set_events(tool, mask)
    try:
        result = outcome(thunk, filename)
    finally:
        mon.set_events(tool, 0)
        for event in [*wanted, E.LINE, *jumps]:
            mon.register_callback(tool, event, None)
        mon.restart_events()
        mon.free_tool_id(tool)
    return events, result


def the_runtimes(callable_: Any) -> bool:
    """A call the wrapper makes: a method of a tracer or of a span of the runtime (bound, or
    the function itself where the interpreter calls a method without binding it), or of
    OpenTelemetry's span context manager."""
    owner = getattr(callable_, "__self__", None)
    if owner is not None:
        return type(owner).__module__ == RUNTIME_MODULE or type(owner).__module__.startswith("opentelemetry.")
    return getattr(callable_, "__module__", None) == RUNTIME_MODULE


RUNTIME_MODULE = runtime.Tracer.__module__


def first_difference(expected: list, actual: list) -> str:
    for index, (a, b) in enumerate(zip(expected, actual)):  # noqa: B007 (read after the loop)
        if a != b:
            break
    else:
        index = min(len(expected), len(actual))
    return (f"event {index}: expected {expected[max(0, index - 3):index + 3]}\n"
            f"        got {actual[max(0, index - 3):index + 3]}")


# Python 3.13 closes a suspended generator without resuming it when no try block encloses its
# yield (``gen_close``); the wrapper's exit is such a block, so the instrumented generator is
# resumed with GeneratorExit to end its span (a generator closed early is counted). These are
# the events that run, and nothing else: left out of the comparison there.
CLOSING = {"settrace_events": (("call", None), ("exception", "GeneratorExit"), ("return", None)),
           "monitoring_events": (("PY_THROW", "GeneratorExit"), ("RAISE", "GeneratorExit"),
                                 ("PY_UNWIND", "GeneratorExit"))}
SKIPS_CLOSE = sys.version_info >= (3, 13)


def without_closing(events: list, recorder: str) -> tuple[list, int]:
    """The events with each run of a generator frame that only receives and re-raises
    GeneratorExit at its yield's line taken out, and how many were taken out."""
    pattern = CLOSING[recorder]
    out: list = []
    taken = 0
    index = 0
    while index < len(events):
        window = events[index:index + 3]
        if (len(window) == 3 and all((e[0], e[3]) == p for e, p in zip(window, pattern))
                and len({(e[1], e[2]) for e in window}) == 1):
            index += 3
            taken += 1
            continue
        out.append(events[index])
        index += 1
    return out, taken


class Differential:
    """Runs calls against a plain and an instrumented namespace and collects differences."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.calls = 0
        self.closings = 0  # generator closes left out (SKIPS_CLOSE)
        self.left_out: list[str] = []
        self.problems: list[str] = []

    def check(self, label: str, plain: Callable[[], Any], instrumented: Callable[[], Any]) -> None:
        """``plain`` and ``instrumented`` make the same call, each in its own namespace."""
        recorders = [settrace_events] + ([monitoring_events] if MONITORING else [])
        for record in recorders:
            try:
                expected = record(plain, self.filename)
            except OverBudget:
                self.left_out.append(label)
                return
            try:
                actual = record(instrumented, self.filename)
            except OverBudget:
                actual = (["over budget"], None)
            if SKIPS_CLOSE:
                expected = (without_closing(expected[0], record.__name__)[0], expected[1])
                events, taken = without_closing(actual[0], record.__name__)
                actual = (events, actual[1])
                self.closings += taken
            if actual != expected:
                which = "result" if actual[0] == expected[0] else first_difference(expected[0], actual[0])
                self.problems.append(f"{label} ({record.__name__}): {which}\n  expected {expected[1]}\n"
                                     f"  got      {actual[1]}")
        self.calls += 1


# -- the hand-written shapes -------------------------------------------------------------------


def run_coroutine(coro: Any) -> Any:
    try:
        while True:
            coro.send(None)
    except StopIteration as stop:
        return stop.value


def drain_async(agen: Any, throw_at: int = -1) -> list:
    out = []
    while True:
        try:
            if len(out) == throw_at:
                out.append(run_coroutine(agen.athrow(KeyError("thrown"))))
            else:
                out.append(run_coroutine(agen.__anext__()))
        except StopAsyncIteration:
            return out


def throw_into(gen: Any, at: int, error: BaseException) -> list:
    out = [next(gen) for _ in range(at)]
    try:
        out.append(gen.throw(error))
        out.extend(gen)
    except StopIteration:
        pass
    return out


def close_after(gen: Any, at: int) -> list:
    out = [next(gen) for _ in range(at)]
    gen.close()
    return out


def caller_of_one_line(ns: dict) -> Any:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ns["one_line_warn"]()
    return [(Path(w.filename).name, w.lineno) for w in seen], ns["one_line_caller"]()


# name -> calls, each a function of the module's namespace
SHAPE_CALLS: dict[str, list[Callable[[dict], Any]]] = {
    "S.add": [lambda ns: ns["S"](None, set()).add(1), lambda ns: ns["S"](None, {1}).add(1),
              lambda ns: ns["S"](set(), set()).add(1)],
    "pairs": [lambda ns: list(ns["pairs"](2, True)), lambda ns: list(ns["pairs"](4, False)),
              lambda ns: list(ns["pairs"](0, True))],
    "nested_if": [lambda ns, a=a, b=b, c=c: ns["nested_if"](a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)],
    "tail_nested_if": [lambda ns, a=a, b=b, c=c: ns["tail_nested_if"](a, b, c)
                       for a in (0, 1) for b in (0, 1) for c in (0, 1)],
    "tail_bool_test": [lambda ns, a=a, b=b: ns["tail_bool_test"](a, b) for a in (0, 1) for b in (0, 1)],
    "tail_ifexp": [lambda ns: ns["tail_ifexp"](0), lambda ns: ns["tail_ifexp"](1)],
    "one_line_if": [lambda ns: ns["one_line_if"](1), lambda ns: ns["one_line_if"](-1)],
    "one_line_if_tail": [lambda ns: ns["one_line_if_tail"](1), lambda ns: ns["one_line_if_tail"](5)],
    "loop_else": [lambda ns: ns["loop_else"]([1, 2], 2), lambda ns: ns["loop_else"]([1, 2], 3),
                  lambda ns: ns["loop_else"]([], 0)],
    "while_else": [lambda ns: ns["while_else"](3, 1), lambda ns: ns["while_else"](3, 7), lambda ns: ns["while_else"](0, 0)],
    "loop_tail_break": [lambda ns: ns["loop_tail_break"]([0, 1]), lambda ns: ns["loop_tail_break"]([0, 0]),
                        lambda ns: ns["loop_tail_break"]([])],
    "loop_tail": [lambda ns: ns["loop_tail"]([1, 2]), lambda ns: ns["loop_tail"]([]),
                  lambda ns: ns["loop_tail"]([1, "x"])],
    "while_tail": [lambda ns: ns["while_tail"](2), lambda ns: ns["while_tail"](0)],
    "while_true": [lambda ns: ns["while_true"](2)],
    "early_return_in_loop": [lambda ns: ns["early_return_in_loop"]([1, 2]), lambda ns: ns["early_return_in_loop"]([1, 3]),
                             lambda ns: ns["early_return_in_loop"]([-1, 5]), lambda ns: ns["early_return_in_loop"]([])],
    "try_finally": [lambda ns: ns["try_finally"](0), lambda ns: ns["try_finally"](2), lambda ns: ns["try_finally"]("x")],
    "try_finally_tail": [lambda ns: ns["try_finally_tail"](1), lambda ns: ns["try_finally_tail"](0)],
    "try_finally_if_else": [lambda ns: ns["try_finally_if_else"](1), lambda ns: ns["try_finally_if_else"](0)],
    "try_except_levels": [lambda ns, x=x: ns["try_except_levels"](x) for x in range(5)],
    "try_except_tail": [lambda ns: ns["try_except_tail"](1), lambda ns: ns["try_except_tail"](0),
                        lambda ns: ns["try_except_tail"]("x"), lambda ns: ns["try_except_tail"]("")],
    "try_else_tail": [lambda ns: ns["try_else_tail"]("1"), lambda ns: ns["try_else_tail"]("0"),
                      lambda ns: ns["try_else_tail"]("x")],
    "raise_from_nested": [lambda ns, x=x: ns["raise_from_nested"](x) for x in range(3)],
    "reraise_new": [lambda ns: ns["reraise_new"](1)],
    "with_tail": [lambda ns: ns["with_tail"](0), lambda ns: ns["with_tail"](1)],
    "with_raise": [lambda ns: ns["with_raise"](0), lambda ns: ns["with_raise"](1)],
    "match_tail": [lambda ns, x=x: ns["match_tail"](x) for x in (0, [1, 2], {"k": 1}, {"k": 0}, "s", 2.5)],
    "match_return": [lambda ns: ns["match_return"](5), lambda ns: ns["match_return"](0)],
    "comprehension": [lambda ns: ns["comprehension"]([0, 1, 2])],
    "lambda_tail": [lambda ns: ns["lambda_tail"]([2, 1])],
    "gen_return": [lambda ns: list(ns["gen_return"](2)), lambda ns: list(ns["gen_return"](5)),
                   lambda ns: throw_into(ns["gen_return"](5), 1, KeyError("k")),
                   lambda ns: close_after(ns["gen_return"](5), 2), lambda ns: close_after(ns["gen_return"](5), 0)],
    "gen_try": [lambda ns: list(ns["gen_try"](1)), lambda ns: throw_into(ns["gen_try"](1), 1, ValueError("v")),
                lambda ns: throw_into(ns["gen_try"](1), 1, KeyError("k")), lambda ns: close_after(ns["gen_try"](1), 1),
                lambda ns: throw_into(ns["gen_try"](1), 2, GeneratorExit())],
    "gen_from": [lambda ns: list(ns["gen_from"](0)), lambda ns: list(ns["gen_from"](5)),
                 lambda ns: throw_into(ns["gen_from"](5), 6, ValueError("v"))],
    "coro": [lambda ns: run_coroutine(ns["coro"](1)), lambda ns: run_coroutine(ns["coro"](0))],
    "agen": [lambda ns: drain_async(ns["agen"](0)), lambda ns: drain_async(ns["agen"](2)),
             lambda ns: drain_async(ns["agen"](3), throw_at=1)],
    "one_line": [lambda ns: ns["one_line"](1)],
    "one_line_raise": [lambda ns: ns["one_line_raise"](1)],
    "one_line_warn": [caller_of_one_line],
    "one_line_caller": [lambda ns: ns["one_line_caller"]()],
    "doc_shares_line": [lambda ns: ns["doc_shares_line"](2)],
    "deep_raise": [lambda ns: ns["deep_raise"](0), lambda ns: ns["deep_raise"](5)],
    "closure": [lambda ns: ns["closure"](0), lambda ns: ns["closure"](5)],
    "locals_seen": [lambda ns: ns["locals_seen"]()],
    "return_ifexp": [lambda ns: ns["return_ifexp"](0, 1), lambda ns: ns["return_ifexp"](1, 1)],
    "return_ifexp_lines": [lambda ns: ns["return_ifexp_lines"](0, 1), lambda ns: ns["return_ifexp_lines"](1, 1)],
    "return_chain": [lambda ns, x=x: ns["return_chain"](0, x, 2) for x in (-1, 1, 3)],
    "tail_chain": [lambda ns, x=x: ns["tail_chain"](0, x, 2) for x in (-1, 1, 3)],
    "gen_locals": [lambda ns: list(ns["gen_locals"](1))],
}


@pytest.mark.parametrize("style", STYLES)
def test_the_shapes_give_the_originals_events(style: str) -> None:
    source = (HERE / "line_shapes.py").read_text()
    filename = str(HERE / "line_shapes.py")
    plain_code, instrumented_code = compile_both(source, filename, style)
    plain, instrumented = load(plain_code, "shapes"), load(instrumented_code, "shapes")
    defined = {name for name, value in plain.items() if inspect.isfunction(value) and value.__module__ == "shapes"}
    assert defined == {name for name in SHAPE_CALLS if "." not in name}, "every shape is called"
    diff = Differential(filename)
    runtime.reset()
    for name, calls in SHAPE_CALLS.items():
        for index, call in enumerate(calls):
            diff.check(f"{name}#{index}", lambda call=call: call(plain), lambda call=call: call(instrumented))
    assert not diff.problems, "\n".join(diff.problems)
    assert diff.left_out == []
    if style.endswith("otel"):
        return  # (OpenTelemetry's API without an SDK records nothing to count)
    # The instrumented functions did run instrumented: each counted its calls (each call is
    # made once per recorder).
    runs = 2 if MONITORING else 1
    counted = {row["name"]: row["count"] // runs for row in runtime.snapshot() if row["module"] == "shapes"
               and row["count"]}
    assert counted["S.add"] == 3 and counted["pairs"] == 3 and counted["one_line_warn"] == 1
    assert counted["gen_try"] == 5 and counted["agen"] == 3 and counted["try_except_levels"] == 5


# -- the standard library, called with made-up arguments ------------------------------------------

# module (path under the stdlib), package, names never called (I/O, printing, the file system,
# the environment, sleeping, work without bound)
MODULES: list[tuple[str, str | None, set[str]]] = [
    ("textwrap.py", None, set()),
    ("colorsys.py", None, set()),
    ("fnmatch.py", None, set()),
    ("shlex.py", None, {"shlex.read_token", "shlex.get_token", "shlex.__next__", "shlex.sourcehook", "shlex.push_source",
                        "shlex.pop_source", "shlex.error_leader", "shlex.push_token", "_print_tokens"}),
    ("html/__init__.py", "html", set()),
    ("string.py", None, set()),
    ("reprlib.py", None, set()),
    ("graphlib.py", None, set()),
    ("fractions.py", None, {"Fraction.__pow__", "Fraction.__rpow__", "Fraction.limit_denominator"}),
    ("statistics.py", None, set()),
    ("difflib.py", None, {"HtmlDiff.make_file", "restore", "_test", "_mdiff"}),
    ("calendar.py", None, {"prweek", "prmonth", "prcal", "main", "format", "formatstring", "TextCalendar.prweek",
                           "TextCalendar.prmonth", "TextCalendar.pryear", "setfirstweekday"}),
    ("ipaddress.py", None, set()),
    ("urllib/parse.py", "urllib", set()),
    ("posixpath.py", None, {"exists", "lexists", "isdir", "isfile", "islink", "ismount", "getsize", "getmtime",
                            "getatime", "getctime", "samefile", "sameopenfile", "samestat", "realpath", "expanduser",
                            "abspath", "relpath", "_joinrealpath", "isjunction", "isdevdrive", "isreserved"}),
    ("ntpath.py", None, {"exists", "lexists", "isdir", "isfile", "islink", "ismount", "getsize", "getmtime",
                         "getatime", "getctime", "samefile", "sameopenfile", "samestat", "realpath", "expanduser",
                         "abspath", "relpath", "_abspath_fallback", "_getfinalpathname_nonstrict", "_readlink_deep",
                         "isjunction", "isdevdrive", "isreserved", "_isreservedname"}),
    ("re/_parser.py", "re", set()),
    ("_pydecimal.py", None, {"Decimal.__pow__", "Decimal.__rpow__", "Context.power", "Decimal.exp", "Decimal.ln",
                             "Decimal.log10", "Context.exp", "Context.ln", "Context.log10", "Decimal._power_exact",
                             "setcontext", "localcontext", "_dpower", "_dexp", "_dlog", "_dlog10", "_ilog", "_iexp",
                             "_log10_lb", "Decimal.__round__", "Context.__reduce__", "Decimal.__reduce__",
                             "_sqrt_nearest", "Decimal.sqrt", "Context.sqrt", "Decimal._round", "Decimal.__format__",
                             "Decimal.scaleb", "Context.scaleb", "Decimal.shift", "Decimal.rotate"}),
    ("email/_parseaddr.py", "email", set()),
    ("email/quoprimime.py", "email", set()),
    ("base64.py", None, {"main", "test", "encode", "decode"}),
    ("quopri.py", None, {"main", "encode", "decode"}),
    ("gettext.py", None, {"translation", "install", "bindtextdomain", "textdomain", "dgettext", "dngettext",
                          "gettext", "ngettext", "pgettext", "npgettext", "dpgettext", "dnpgettext", "find",
                          "GNUTranslations._parse", "NullTranslations.install", "ldgettext", "ldngettext",
                          "lgettext", "lngettext", "bind_textdomain_codeset", "_expand_lang"}),
    ("copy.py", None, set()),
    ("heapq.py", None, set()),
    ("bisect.py", None, set()),
    ("pprint.py", None, {"pprint", "pp", "PrettyPrinter.pprint", "_perfcheck"}),
    ("tokenize.py", None, {"main", "open", "detect_encoding", "tokenize", "_tokenize", "_generate_tokens_from_c_tokenizer",
                           "generate_tokens"}),
    ("json/decoder.py", "json", set()),
    ("json/encoder.py", "json", set()),
    ("email/_header_value_parser.py", "email", set()),
    ("email/utils.py", "email", {"make_msgid", "localtime", "formatdate", "format_datetime"}),
    ("http/cookies.py", "http", set()),
    ("tomllib/_parser.py", "tomllib", set()),
    ("ast.py", None, {"main", "parse", "dump", "unparse", "walk", "iter_child_nodes", "iter_fields",
                      "fix_missing_locations", "copy_location", "increment_lineno", "get_source_segment",
                      "get_docstring", "NodeVisitor.visit", "NodeVisitor.generic_visit", "NodeTransformer.generic_visit",
                      "_Unparser.visit", "_Unparser.traverse", "compare"}),
    ("configparser.py", None, {"RawConfigParser.read", "RawConfigParser.write", "RawConfigParser.read_file",
                               "RawConfigParser._read", "RawConfigParser.readfp", "ConfigParser._read_defaults"}),
]
FAST_MODULES = {"textwrap.py", "colorsys.py", "fnmatch.py", "html/__init__.py", "graphlib.py", "shlex.py",
                "string.py", "reprlib.py", "urllib/parse.py", "fractions.py", "http/cookies.py", "email/utils.py"}

POOL: list[Any] = [0, 1, -1, 2, 3, 7, 10, 255, -7, 0.5, -2.5, 3.0, 0.001, True, False, None, "", "a", "abc",
                   "Hello, World", "a b  c", " lead", "line1\nline2\n", "1.5", "-0", "NaN", "10", "0x1f",
                   "192.168.0.1", "::1", "10.0.0.0/8", "a/b/../c", "/usr/lib/", "C:\\x\\y", "http://u:p@h:8080/p/a?q=1#f",
                   "[a-c]+", "(a|b)*c", "*.py", "x=1;y=2", "'q' \"s\"", "\u00fcn\u00ef", "%(a)s %d", "=3D=\n",
                   b"", b"abc", b"\x00\xff", [], [1, 2, 3], [3, 1, 2], ["a", "b"], [[1], [2]], (), (1, 2), ("x", 1),
                   {}, {"a": 1}, {1, 2}, range(3)]
CALLS_PER_SIGNATURE = 6


def arities(func: Callable) -> list[int]:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    if any(p.kind == p.KEYWORD_ONLY and p.default is p.empty for p in signature.parameters.values()):
        return []
    return sorted({required, min(len(positional), required + 1)})


def argument_sets(label: str, func: Callable, count: int) -> list[tuple]:
    rng = random.Random(label)
    found = []
    for arity in arities(func):
        for _ in range(count if arity else 1):
            found.append(tuple(rng.randrange(len(POOL)) for _ in range(arity)))
    return found


def make_args(picks: tuple) -> tuple:
    return tuple(copy.deepcopy(POOL[i]) for i in picks)


def callables(namespace: dict, filename: str, skip: set[str]) -> list[tuple[str, Callable | None, str]]:
    """(label, function or None for a method, method name) of the module's own functions and
    of its classes' methods, in definition order."""
    found: list[tuple[str, Callable | None, str]] = []
    for name, value in list(namespace.items()):
        if name in skip or "print" in name:  # (printing: the test's output)
            continue
        if inspect.isfunction(value) and value.__code__.co_filename == filename:
            if not (inspect.iscoroutinefunction(value) or inspect.isasyncgenfunction(value)):
                found.append((name, value, ""))
        elif inspect.isclass(value) and value.__module__ == namespace["__name__"]:
            for attribute, member in vars(value).items():
                if f"{name}.{attribute}" in skip or "print" in attribute or attribute in ("__init__", "__new__", "__init_subclass__",
                                                                   "__class_getitem__", "__del__"):
                    continue
                member = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                if inspect.isfunction(member) and member.__code__.co_filename == filename:
                    found.append((f"{name}.{attribute}", None, attribute))
    return found


def instance_picks(label: str, cls: type) -> list[tuple]:
    """Argument sets that construct an instance of ``cls`` (tried on the plain namespace)."""
    good = []
    for picks in argument_sets(label + ".__init__", cls, 12):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cls(*make_args(picks))
        except Exception:  # noqa: BLE001 - made-up arguments: most do not fit
            continue
        good.append(picks)
        if len(good) == 2:
            break
    return good


def consume(value: Any) -> Any:
    if isinstance(value, types.GeneratorType):
        out = []
        for item in value:
            out.append(item)
            if len(out) > 200:
                break
        return out
    return value


def check_module(relative: str, package: str | None, skip: set[str], style: str, count: int) -> Differential:
    source = (STDLIB / relative).read_text(encoding="utf-8")
    filename = f"<corpus>/{relative}"
    name = f"{package}.telemetry_corpus_{Path(relative).stem}" if package else f"telemetry_corpus_{Path(relative).stem}"
    plain_code, instrumented_code = compile_both(source, filename, style)
    plain, instrumented = load(plain_code, name, package), load(instrumented_code, name, package)
    diff = Differential(filename)
    for label, func, method in callables(plain, filename, skip):
        if func is not None:
            other = instrumented[label]
            for picks in argument_sets(label, func, count):
                diff.check(label, lambda f=func, p=picks: consume(f(*make_args(p))),
                           lambda f=other, p=picks: consume(f(*make_args(p))))
            continue
        owner = label.split(".")[0]
        cls, other_cls = plain[owner], instrumented[owner]
        for picks in instance_picks(label, cls):
            member = inspect.getattr_static(cls, method)
            if isinstance(member, (staticmethod, classmethod)):
                targets = (getattr(cls, method), getattr(other_cls, method))
            else:
                targets = (getattr(cls(*make_args(picks)), method), getattr(other_cls(*make_args(picks)), method))
            for args in argument_sets(label, targets[0], max(1, count // 2)):
                diff.check(label, lambda f=targets[0], a=args: consume(f(*make_args(a))),
                           lambda f=targets[1], a=args: consume(f(*make_args(a))))
    return diff


def run_corpus(modules: list[tuple[str, str | None, set[str]]], style: str, count: int) -> tuple[int, int, list[str]]:
    calls = left_out = 0
    problems: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for relative, package, skip in modules:
            if not (STDLIB / relative).exists():
                continue
            diff = check_module(relative, package, skip, style, count)
            calls += diff.calls
            left_out += len(diff.left_out)
            problems += [f"{relative}: {problem}" for problem in diff.problems]
    return calls, left_out, problems


@pytest.mark.parametrize("style", STYLES)
def test_standard_library_functions_give_the_originals_events(style: str) -> None:
    """A few small modules, every call (the full corpus is the slow test below)."""
    calls, left_out, problems = run_corpus([m for m in MODULES if m[0] in FAST_MODULES], style, 3)
    assert not problems, "\n".join(problems[:20])
    assert calls > 500


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_standard_library_corpus_gives_the_originals_events(style: str, capsys: pytest.CaptureFixture) -> None:
    calls, left_out, problems = run_corpus(MODULES, style, CALLS_PER_SIGNATURE)
    with capsys.disabled():
        print(f"\n[{style}] {calls} calls compared ({'settrace and sys.monitoring' if MONITORING else 'settrace'}), "
              f"{left_out} left out (over {BUDGET} events), {len(problems)} differing")
    assert not problems, f"{len(problems)} calls differ:\n" + "\n".join(problems[:20])
    assert calls > 3000
