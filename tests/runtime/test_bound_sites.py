"""The try form as the import hook loads it: each function's site bound into its code
(``engine/bytecode.py`` ``bind_sites``, ``runtime._core.bind_site``), so that ``end`` finds the
site without a lookup by name. Bound or not, the counts, errors and rows are the same; a site
bound but never called is in no snapshot; and a decided site decides again at folds."""

from __future__ import annotations

import itertools
import sys
import textwrap
import types

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.engine import bytecode
from pytest_telemetry_inject.engine.compiler import compile_mapped
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.plugin.importhook import _bound
from pytest_telemetry_inject.runtime import _core
from pytest_telemetry_inject.settings import Settings

from .test_on_the_fly_form import EXPECTED, SOURCE, exercise, rows

pytestmark = pytest.mark.skipif(not bytecode.SUPPORTED, reason="the try form needs CPython 3.11 to 3.13")

NAMES = '''
    def named(x):
        if x:
            return "named"
        return "other"
'''
_names = itertools.count()


def load(source: str = SOURCE, *, bind: bool = True) -> types.ModuleType:
    text = textwrap.dedent(source)
    name = f"ti_bound_{next(_names)}"
    result = Engine(Settings(style="try", target="runtime"), cache=None).instrument(text.encode(), f"{name}.py",
                                                                                      import_name="")
    code = compile_mapped(result.output.decode(), result.get_line_map(), f"{name}.py", bindable=bind)
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(_bound(code, name) if bind else code, module.__dict__)
    return module


def is_bound(function: types.FunctionType) -> bool:
    return any(isinstance(const, _core._Site) for const in function.__code__.co_consts)


def test_bound_counts_errors_and_rows_are_the_unbound_ones() -> None:
    bound, unbound = load(), load(bind=False)
    # A generator whose code cannot take the try form's edits (3.12 and later) is compiled in the
    # with form, which has no end() to bind; in the try form it is bound.
    try_form_gen = "start_generator" in bound.gen.__code__.co_names
    assert is_bound(bound.leaf) and is_bound(bound.gen) == try_form_gen and not is_bound(unbound.leaf)
    assert try_form_gen or sys.version_info >= (3, 12)
    exercise(bound)
    exercise(unbound)
    found, expected = rows(bound), rows(unbound)
    assert {name: (row["count"], row["errors"]) for name, row in found.items()} == EXPECTED
    for name, row in found.items():
        other = expected[name]
        assert (row["file"], row["line"], row["exceptions"]) == (
            other["file"].replace(unbound.__name__, bound.__name__), other["line"], other["exceptions"])


def test_a_constant_equal_to_the_span_name_stays_a_string() -> None:
    m = load(NAMES)
    assert is_bound(m.named)
    assert (m.named(1), m.named(0)) == ("named", "other")
    assert rows(m)["named"]["count"] == 2


def test_a_site_bound_but_never_called_is_in_no_snapshot() -> None:
    m = load()
    assert rows(m) == {}
    m.leaf(1)
    assert set(rows(m)) == {"leaf"}
    runtime.reset()  # a site once called stays, with count 0, as before
    assert rows(m)["leaf"]["count"] == 0


@pytest.mark.parametrize("settings", [{"disabled": True}, {"keep_events": True}])
def test_bound_code_in_the_other_modes(settings: dict) -> None:
    m = load()
    runtime.configure(**settings)
    exercise(m)
    counts = {name: (row["count"], row["errors"]) for name, row in rows(m).items()}
    if settings.get("disabled"):
        assert not counts
    else:
        assert counts == EXPECTED
        assert {e["name"] for e in runtime.events() if e["module"] == m.__name__} == set(EXPECTED)


def run_as(bound_for: str, name: str) -> types.ModuleType:
    """SOURCE's code bound for module ``bound_for``, run as module ``name``."""
    text = textwrap.dedent(SOURCE)
    result = Engine(Settings(style="try", target="runtime"), cache=None).instrument(text.encode(), "x.py",
                                                                                      import_name="")
    code = _bound(compile_mapped(result.output.decode(), result.get_line_map(), "x.py", bindable=True), bound_for)
    module = types.ModuleType(name)
    exec(code, module.__dict__)
    return module


def test_bound_under_another_module_name() -> None:
    """Code bound for one module name, run under another (``python -m``: ``__main__``)."""
    module = run_as("ti_bound_real", "ti_bound_main")
    runtime.configure(keep_events=True)  # the span modes look sites up by name first
    with pytest.raises(module.Boom):
        module.fails(1)
    runtime.configure(keep_events=False)
    module.leaf(1)
    found = {row["name"]: row for row in runtime.snapshot() if row["module"] == "ti_bound_real"}
    assert (found["fails"]["count"], found["fails"]["errors"], found["leaf"]["count"]) == (1, 1, 1)


def test_under_another_module_name_a_span_begins_on_its_site_after_the_first_call(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The start of a bound function is its site's tracer's (the name it was bound for), its
    end the running module's: the end teaches the site's tracer the function's code too, so
    only the first call begins on the placeholder (not every call)."""
    module = run_as("ti_bound_as", "ti_bound_run_as")
    placeholders = []
    placeholder = _core.Tracer._placeholder
    monkeypatch.setattr(_core.Tracer, "_placeholder", lambda self: placeholders.append(self.module) or placeholder(self))
    runtime.configure(keep_events=True)
    for i in range(3):
        assert module.leaf(i) == i * 2
    runtime.flush()
    assert [e["name"] for e in runtime.events() if e["module"] == "ti_bound_as"] == ["leaf"] * 3
    assert len(placeholders) == 1


def cheap_then_slow(m: types.ModuleType, calls: int) -> None:
    for i in range(calls):
        m.leaf(i)


def test_a_sampled_site_that_turns_slow_is_timed_on_every_call_again(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_core, "_BUSY", float("inf"))  # (slow and unhurried: a busy site stays sampled)
    _core.configure(timing_every=4, timing_after=20, timing_below=10.0)
    m = load()
    cheap_then_slow(m, 100)
    site = _core._sites[(m.__name__, "leaf")]
    assert site.every == 4
    _core.configure(timing_below=1e-12)  # (sampled sites stay sampled: only a fold decides again)
    assert site.every == 4
    for _ in range(10):
        cheap_then_slow(m, 40)
        runtime.snapshot()  # a fold
    assert site.every == -1 and site.left == 0
    before = rows(m)["leaf"]
    cheap_then_slow(m, 50)
    after = rows(m)["leaf"]
    assert after["count"] == before["count"] + 50 and after["untimed"] == before["untimed"]


def test_a_site_decided_slow_that_turns_cheap_is_sampled() -> None:
    _core.configure(timing_every=4, timing_after=20, timing_below=1e-12)
    m = load()
    cheap_then_slow(m, 30)
    site = _core._sites[(m.__name__, "leaf")]
    assert site.every == -1
    _core.configure(timing_below=10.0)
    # decided at the 20th call; its window (80 calls, 4 x timing_after) leaves out the 20
    # before the decision: complete at the 100th call, where the hot path looks at it
    for _ in range(3):
        cheap_then_slow(m, 20)
        runtime.snapshot()
    assert site.every == -1
    cheap_then_slow(m, 20)
    assert site.every == 4
    cheap_then_slow(m, 100)
    row = rows(m)["leaf"]
    assert row["count"] == 210 and row["untimed"] > 0


@pytest.mark.parametrize("bind", [True, False])
def test_a_decision_is_taken_again_within_one_long_test(bind: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # One test, no fold (the test switch is the usual one): a site decided to be timed on
    # every call (its first calls slow) is looked at again one window later, and a sampled
    # site that stays cheap gets its longer periods, both by a look of its own hot path, which
    # makes no aggregate (an object the garbage collector tracks) in the middle of the test.
    # (markupsafe's escape was timed on all 80,000 calls of its leak test.)
    monkeypatch.setattr(_core, "_BUSY", float("inf"))  # (cheap, not busy, decides here)
    monkeypatch.setattr(_core, "_GROW_AFTER", 40)
    _core.configure(timing_every=4, timing_after=20, timing_below=1e-12)
    m = load(bind=bind)
    cheap_then_slow(m, 30)
    site = _core._sites[(m.__name__, "leaf")]
    assert site.every == -1 and -71 <= site.left <= -70  # decided at the 20th call (unbound: 21st); 80 to go
    _core.configure(timing_below=10.0)  # (from now on every window is cheap)
    rows_before = dict(site.stats)  # (configure folded: the calls outside any test)
    cheap_then_slow(m, 71)
    assert site.every == 4  # the window's look sampled it (the 100th call; unbound, the 101st)
    cheap_then_slow(m, 20_000)
    assert site.every == 4 * _core._GROW_MAX  # grown within the test
    assert site.stats == rows_before and all(site.stats[k] is v for k, v in rows_before.items())
    row = rows(m)["leaf"]
    timed = row["count"] - row["untimed"]
    assert row["count"] == 20_101 and row["estimated"] is True
    assert timed < 20_000 // 16  # at one of 4 throughout: 5,000
    assert row["min_ns"] <= row["total_ns"] / row["count"] <= row["max_ns"]


def test_a_bound_site_pickles_as_the_site_of_its_module_and_name() -> None:
    import pickle

    m = load()
    site = _core._sites[(m.__name__, "leaf")]
    assert pickle.loads(pickle.dumps(site)) is site


SKIPPING = '''
    class Boom(Exception):
        pass


    def maybe(x):
        if x < 0:
            raise Boom(x)
        return x + 1
'''


def calls_into_the_runtime(action) -> int:  # type: ignore[no-untyped-def]
    """Calls of the runtime's Python functions while ``action()`` runs (a profile hook)."""
    seen = []

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call" and frame.f_code.co_filename == _core.__file__:
            seen.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return len(seen)


def slots_left(site: _core._Site) -> int:
    """The untimed calls the site's last timed call granted and its entry has not made yet:
    ``skip``, or on 3.11 the slots left in ``ticks`` (``bytecode._tight_entry``)."""
    return site.ticks.__length_hint__() if _core._TICKS else site.skip  # type: ignore[attr-defined, no-any-return]


def test_an_untimed_call_makes_no_call_into_the_runtime_and_is_counted() -> None:
    _core.configure(timing_every=4, timing_after=20, timing_below=10.0)
    m = load(SKIPPING)
    for i in range(40):
        m.maybe(i)
    site = _core._sites[(m.__name__, "maybe")]
    assert site.every == 4
    runtime.snapshot()  # a fold: the next call is timed, the 3 after it skipped
    assert calls_into_the_runtime(lambda: m.maybe(1)) == 1  # end() of the timed call
    assert slots_left(site) == 3
    assert calls_into_the_runtime(lambda: [m.maybe(i) for i in range(3)]) == 0
    assert (slots_left(site), site.granted) == (0, 3)
    row = rows(m)["maybe"]
    assert (row["count"], row["errors"]) == (44, 0) and row["untimed"] >= 3


def test_errors_of_untimed_calls_are_counted_and_their_tracebacks_are_the_originals() -> None:
    _core.configure(timing_every=4, timing_after=20, timing_below=10.0)
    m = load(SKIPPING)
    values = [-1 if i % 7 == 3 else i for i in range(200)]
    raised, lines = 0, set()
    for value in values:
        try:
            m.maybe(value)
        except m.Boom as error:
            raised += 1
            lines.add(error.__traceback__.tb_next.tb_lineno)  # type: ignore[union-attr]
    row = rows(m)["maybe"]
    assert row["untimed"] > 100
    assert (row["count"], row["errors"], row["exceptions"]) == (200, raised, {"Boom": raised})
    assert lines == {8}, "every call raised from the raise statement's line, timed or not"
    assert m.maybe.__code__.co_varnames == ("x",)


def test_untimed_calls_go_to_the_test_they_ran_in_and_survive_a_change_of_mode() -> None:
    _core.configure(timing_every=8, timing_after=20, timing_below=10.0)
    m = load(SKIPPING)
    for i in range(30):
        m.maybe(i)
    runtime.set_current_test("t::a")
    for i in range(5):  # one timed, four skipped: a block left half used
        m.maybe(i)
    runtime.set_current_test("t::b")
    for i in range(11):
        m.maybe(i)
    site = _core._sites[(m.__name__, "maybe")]
    assert site.granted > slots_left(site) > 0
    runtime.configure(keep_events=True)  # events: calls are no longer skipped
    assert slots_left(site) == site.granted == 0
    m.maybe(1)
    runtime.set_current_test(None)
    by_test = {row["test"]: row["count"] for row in runtime.snapshot(per_test=True) if row["module"] == m.__name__}
    assert (by_test["t::a"], by_test["t::b"]) == (5, 12)


def test_the_disabled_runtime_skips_nothing_and_counts_nothing() -> None:
    _core.configure(timing_every=4, timing_after=20, timing_below=10.0)
    m = load(SKIPPING)
    for i in range(40):
        m.maybe(i)
    runtime.configure(disabled=True)
    site = _core._sites[(m.__name__, "maybe")]
    assert slots_left(site) == 0
    before = site.granted
    for i in range(20):
        m.maybe(i)
    assert (slots_left(site), site.granted) == (0, before)
    runtime.configure(disabled=False)
    assert rows(m)["maybe"]["count"] == 40


def c_calls_of(function: types.FunctionType, action) -> list[str]:  # type: ignore[no-untyped-def]
    """The C functions ``function``'s own frame calls while ``action()`` runs."""
    seen: list[str] = []

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "c_call" and frame.f_code is function.__code__:
            seen.append(getattr(arg, "__qualname__", repr(arg)))

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.skipif(not bytecode.JUMPING, reason="the exit jumps over its call on 3.11 only")
def test_on_3_11_an_untimed_call_calls_nothing_at_all_and_every_exit_jumps() -> None:
    _core.configure(timing_every=4, timing_after=20, timing_below=10.0)
    m = load(NAMES)
    instructions = bytecode.instructions_of(m.named.__code__)
    names = [ins.opname for ins in instructions]
    # (an untimed call returns at once; a timed one goes to the exit written after the code:
    # bytecode._inline_exits)
    assert names.count("POP_JUMP_FORWARD_IF_NOT_NONE") == 2, "one jump per return's exit"
    # The entry (bytecode._tight_entry): an untimed call takes a slot from the site's ticks
    # (FOR_ITER; the slot and the iterator dropped, None pushed as a constant) and jumps to
    # the body, no count of its own.
    assert names[1:8] == ["LOAD_CONST", "LOAD_ATTR", "FOR_ITER", "POP_TOP", "POP_TOP", "LOAD_CONST", "JUMP_FORWARD"]
    assert instructions[2].argval == "ticks" and "skip" not in [ins.argval for ins in instructions]
    assert instructions[6].argval is None and "off" not in [ins.argval for ins in instructions]
    # Timed (no slot left), the clock is the site's own start (a slot), not _telemetry.start
    # (LOAD_METHOD); it falls into the body.
    at = [ins.offset for ins in instructions].index(instructions[3].argval)
    assert names[at:at + 5] == ["PUSH_NULL", "LOAD_CONST", "LOAD_ATTR", "PRECALL", "CALL"]
    assert instructions[at + 1].argval is instructions[1].argval and instructions[at + 2].argval == "start"
    assert instructions[at + 5].offset == instructions[7].argval, "both branches join at the body"
    assert "LOAD_METHOD" not in names[:at + 5]
    assert m.named.__code__.co_names.count("end_site") == 1 and "ends_site" not in m.named.__code__.co_names
    for i in range(40):
        m.named(i % 2)
    runtime.snapshot()  # a fold: the next call is timed, the 3 after it skipped
    assert c_calls_of(m.named, lambda: m.named(1)) == ["perf_counter"]  # (end_site: a Python call)
    assert c_calls_of(m.named, lambda: [m.named(i) for i in (0, 1, 0)]) == []
    runtime.configure(disabled=True)
    assert c_calls_of(m.named, lambda: m.named(0)) == ["dict.clear"]  # the disabled start(); no exit call
    runtime.configure(disabled=False)
    assert rows(m)["named"]["count"] == 44


def line_events(function: types.FunctionType, *args: object) -> list[tuple[str, int]]:
    """The trace events of ``function``'s own frame for one call (call, line, return), with their lines."""
    seen: list[tuple[str, int]] = []

    def trace(frame, event, arg):  # type: ignore[no-untyped-def]
        if frame.f_code is function.__code__:
            seen.append((event, frame.f_lineno))
            return trace
        return None

    sys.settrace(trace)
    try:
        function(*args)
    finally:
        sys.settrace(None)
    return seen


@pytest.mark.skipif(not bytecode.JUMPING, reason="the exit is written into the function on 3.11 only")
def test_on_3_11_a_site_timed_on_every_call_ends_its_calls_in_the_function_itself() -> None:
    """``bytecode._inline_exits``: a call of a site timed on every call reads the clock and
    counts itself in its own frame, no call into the runtime; the first call after a fold
    goes through ``end_site``, which puts the site among those the next fold reads."""
    _core.configure(timing_every=1)
    m = load(NAMES)
    plain = line_events(m.named, 1) + line_events(m.named, 0)
    site = _core._sites[(m.__name__, "named")]
    assert site.left == 0 and site.limit == float("inf")
    runtime.snapshot()  # a fold: the next call is the first since
    assert calls_into_the_runtime(lambda: m.named(1)) == 1
    assert calls_into_the_runtime(lambda: [m.named(i % 2) for i in range(20)]) == 0
    assert c_calls_of(m.named, lambda: m.named(0)) == ["perf_counter", "perf_counter"]
    row = rows(m)["named"]
    assert (row["count"], row["errors"]) == (24, 0)
    assert 0 < row["min_ns"] <= row["total_ns"] / row["count"] <= row["max_ns"]
    # The next test's first call is a fold's first again: it is in that test's row, and the
    # calls after it with it.
    runtime.set_current_test("t::a")
    for i in range(7):
        m.named(i % 2)
    runtime.set_current_test(None)
    by_test = {r["test"]: r for r in runtime.snapshot(per_test=True) if r["module"] == m.__name__}
    assert by_test["t::a"]["count"] == 7 and by_test["t::a"]["min_ns"] > 0
    # A tracer sees the function's own lines and nothing of the exit, as before the edit.
    assert line_events(m.named, 1) + line_events(m.named, 0) == plain
    assert [event for event in plain if event[0] == "line"] == [("line", 3), ("line", 4), ("line", 3), ("line", 5)]


@pytest.mark.skipif(not bytecode.JUMPING, reason="the exit is written into the function on 3.11 only")
@pytest.mark.parametrize("slot", ["total", "n", "low", "high"])
def test_on_3_11_a_corrupted_site_never_reaches_the_code_through_its_inline_exit(slot: str) -> None:
    """An error in the exit written into the function goes to ``end_site``, which counts it
    as the runtime's fault; the function returns what it returns."""
    runtime.configure(raise_faults=False)  # faults on purpose: counted and swallowed, as in a program
    _core.configure(timing_every=1)
    m = load(NAMES)
    assert (m.named(1), m.named(0)) == ("named", "other")  # (past the first call since the fold)
    site = _core._sites[(m.__name__, "named")]
    saved = getattr(site, slot)
    setattr(site, slot, "corrupted")
    try:
        assert [m.named(i % 2) for i in range(4)] == ["other", "named"] * 2
    finally:
        setattr(site, slot, saved)
    assert runtime.internal_faults(), "the runtime's own exit saw the corrupted slot"
    assert calls_into_the_runtime(lambda: m.named(1)) == 0, "repaired, the exit counts in the function again"


@pytest.mark.skipif(not bytecode.JUMPING, reason="the exit is written into the function on 3.11 only")
def test_on_3_11_the_exits_of_a_long_function_reach_their_blocks() -> None:
    """A function longer than one code unit's jump: each exit's jump to its block after the
    last instruction takes an ``EXTENDED_ARG``, and every return still returns its value."""
    body = "".join(f"    x = x + {i}\n" for i in range(200))
    source = ("def long(x, early):\n    if early == 1:\n        return 'first'\n" + body
              + "    if early == 2:\n        return x\n" + body + "    return -x\n")
    _core.configure(timing_every=1)
    m = load(source)
    instructions = bytecode.instructions_of(m.long.__code__)
    jumps = [i for i, ins in enumerate(instructions) if ins.opname == "POP_JUMP_FORWARD_IF_NOT_NONE"]
    assert len(jumps) == 3 and all(instructions[i - 1].opname == "EXTENDED_ARG" for i in jumps)
    total = sum(range(200))
    m.long(0, 0)  # (the first call since the fold)
    assert calls_into_the_runtime(lambda: [m.long(1, 1), m.long(1, 2), m.long(1, 0)]) == 0
    assert (m.long(1, 1), m.long(1, 2), m.long(1, 0)) == ("first", 1 + total, -(1 + 2 * total))
    assert rows(m)["long"]["count"] == 7


SWITCHES = '''
    switch = None


    def value(mode):
        switch(mode)
        return 7


    def constant(mode):
        switch(mode)
        return "constant"


    def raising(mode):
        switch(mode)
        raise ValueError(mode)
'''
MODES = {"agg": {"disabled": False, "keep_events": False}, "ev": {"disabled": False, "keep_events": True},
         "off": {"disabled": True, "keep_events": False}}


def in_flight(module: types.ModuleType, before: str, during: str) -> list[tuple[tuple[int, int], int]]:
    """Each function called in mode ``before``, the mode turned to ``during`` inside the call:
    its aggregate count and errors, and the spans it made, after a second call in ``during``."""
    module.switch = lambda mode: runtime.configure(**MODES[mode])
    found = []
    for name in ("value", "constant", "raising"):
        runtime.configure(**MODES[before])
        function = getattr(module, name)
        for _ in range(2):
            try:
                assert function(during) in (7, "constant")
            except ValueError:
                assert name == "raising"
        runtime.configure(**MODES["agg"])
        runtime.flush()
        spans = [e for e in runtime.events() if e["module"] == module.__name__ and e["name"] == name]
        row = rows(module).get(name, {"count": 0, "errors": 0})
        found.append(((row["count"], row["errors"]), len(spans)))
    return found


@pytest.mark.parametrize(("before", "during"), [("agg", "ev"), ("ev", "agg"), ("agg", "off"), ("off", "agg"),
                                                ("ev", "off"), ("agg", "agg")])
def test_a_call_across_a_change_of_mode_ends_as_the_runtime_s_own_exit_ends_it(
        before: str, during: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call begun in one mode and ended in another: on 3.11 the exit written into the
    function hands it to the mode's ``end_site`` (a span's state, or the aggregate mode's
    float in another mode, by ``_Site.limit``), which ends it as the function compiled
    without that exit does (the counts, errors and spans of both alike); and a span begun
    before the runtime was disabled is ended, not left current (the disabled mode's
    ``end_site`` and ``raised`` are the span modes'), by the function's own frame."""
    _core.configure(timing_every=1)
    inline = load(SWITCHES)
    assert ("limit" in inline.value.__code__.co_names) == ("limit" in inline.constant.__code__.co_names) == (
        bytecode.JUMPING)
    with monkeypatch.context() as patch:
        patch.setattr(bytecode, "_inline_exits", lambda code: code)
        calling = load(SWITCHES)
    assert "limit" not in calling.value.__code__.co_names
    assert in_flight(inline, before, during) == in_flight(calling, before, during)
    assert _core._current.get() is None, "a span begun before the change was left current"
    learned = [code.co_filename for tr in _core._tracers.values() for code in tr._by_code]
    assert _core.__file__ not in learned, "a span's end taught a runtime frame, not the function's"


@pytest.mark.skipif(not bytecode.JUMPING, reason="the exit is written into the function on 3.11 only")
def test_an_exit_out_of_shape_keeps_its_call(monkeypatch: pytest.MonkeyPatch) -> None:
    code = bytecode._jump_exits(bytecode._tight_entry(picking_code(monkeypatch)))
    inline = bytecode._inline_exits(code)
    assert inline.co_code[:len(code.co_code)] != code.co_code and len(inline.co_code) > len(code.co_code)
    assert inline.co_consts[-1] == code.co_consts[-1], "the sites' tag stays last"
    # Without the entry's site constant in the tag (-1), there is no site to read: unchanged.
    untagged = code.replace(co_consts=(*code.co_consts[:-1], (*code.co_consts[-1][:3], -1)))
    assert bytecode._inline_exits(untagged) is untagged
    # The return's constant on another line than its exit: that exit keeps its call.
    where = bytecode.positions(code)
    returns = [ins for ins in bytecode.instructions_of(code) if ins.opname == "RETURN_VALUE"]
    moved = bytecode.with_positions(code, [(p[0] + 1, p[1] + 1, p[2], p[3]) if at == returns[0].offset // 2 and
                                           p[0] is not None else p for at, p in enumerate(where)])
    partly = bytecode._inline_exits(moved)
    jumps = [ins.opname for ins in bytecode.instructions_of(partly) if ins.opname.startswith("POP_JUMP_FORWARD_IF")]
    assert "POP_JUMP_FORWARD_IF_NONE" in jumps and "POP_JUMP_FORWARD_IF_NOT_NONE" in jumps


@pytest.mark.skipif(not bytecode.JUMPING, reason="the entry reads the site's clock on 3.11 only")
def test_on_3_11_the_entry_s_clock_follows_each_change_of_mode_bound_or_not() -> None:
    """The bound entry calls ``SITE.start``, which the runtime keeps as its tracer's
    ``start`` on every change of mode; an unbound entry's site (``bytecode.UNBOUND``) looks
    the calling module's ``_telemetry`` up; a module without one leaves the call untimed."""
    bound, unbound = load(NAMES), load(NAMES, bind=False)
    site = next(const for const in bound.named.__code__.co_consts if isinstance(const, _core._Site))
    for settings, start in (({"keep_events": True}, _core.Tracer._start_span), ({"disabled": True}, _core._NOTHING.clear),
                            ({"disabled": False, "keep_events": False}, _core._seconds)):
        runtime.configure(**settings)
        assert site.start == bound._telemetry.start and getattr(site.start, "__func__", site.start) == start
        for module in (bound, unbound):
            assert module.named(1) == "named"
        if settings.get("keep_events"):
            runtime.flush()
            events = [e["module"] for e in runtime.events() if e["name"] == "named"]
            assert sorted(events) == sorted([bound.__name__, unbound.__name__])  # (a span each)
    assert rows(bound)["named"]["count"] == rows(unbound)["named"]["count"] == 2  # (not while disabled)
    assert bytecode.UNBOUND.start() is None  # (called from here: no _telemetry in this module)


@pytest.mark.skipif(bytecode.JUMPING or not bytecode.SUPPORTED, reason="3.12+: the exit picks its call")
def test_from_3_12_the_exit_keeps_picking_its_call() -> None:
    m = load(NAMES)
    names = [ins.opname for ins in bytecode.dis.get_instructions(m.named)]
    assert "BINARY_SUBSCR" in names and "ends_site" in m.named.__code__.co_names


def picking_code(monkeypatch: pytest.MonkeyPatch) -> types.CodeType:
    """``named``'s code as compiled where the exit picks its call and the entry is not
    rewritten (``bytecode.JUMPING`` off while compiling), before binding."""
    monkeypatch.setattr(bytecode, "JUMPING", False)
    result = Engine(Settings(style="try", target="runtime"), cache=None).instrument(
        textwrap.dedent(NAMES).encode(), "picking.py", import_name="")
    module = compile_mapped(result.output.decode(), result.get_line_map(), "picking.py", bindable=True)
    (code,) = [const for const in module.co_consts if isinstance(const, types.CodeType)]
    monkeypatch.setattr(bytecode, "JUMPING", True)
    return code


@pytest.mark.skipif(not bytecode.JUMPING, reason="the exit jumps over its call on 3.11 only")
def test_an_exit_out_of_shape_leaves_every_exit_picking(monkeypatch: pytest.MonkeyPatch) -> None:
    code = picking_code(monkeypatch)
    assert bytecode._jump_exits(code).co_code.count(bytecode.dis.opmap["POP_JUMP_FORWARD_IF_NONE"]) >= 2
    # The second exit's ``STATE is None`` tests another constant: not the shape; neither exit jumps.
    loads = [ins for ins in bytecode.dis.get_instructions(code) if ins.opname == "LOAD_CONST" and ins.argval is None]
    raw = bytearray(code.co_code)
    raw[loads[1].offset + 1] = len(code.co_consts) - 1
    tampered = code.replace(co_code=bytes(raw))
    assert bytecode._jump_exits(tampered) is tampered
    assert bytecode._jump_exits(code.replace(co_consts=code.co_consts[:-1] + (None,))).co_code == code.co_code


@pytest.mark.skipif(not bytecode.JUMPING, reason="the entry is rewritten on 3.11 only")
def test_an_entry_out_of_shape_is_left_as_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    code = picking_code(monkeypatch)
    tight = bytecode._tight_entry(code)
    assert len(tight.co_code) == len(code.co_code) and tight.co_code != code.co_code
    assert bytecode.depths_of(tight)
    assert tight.co_names == (*code.co_names, "ticks")  # (the name the entry reads, added)
    # ``SITE.skip -= 1`` on another name than the test's: not the compiled shape.
    store = next(ins for ins in bytecode.dis.get_instructions(code) if ins.opname == "STORE_ATTR")
    raw = bytearray(code.co_code)
    raw[store.offset + 1] = code.co_names.index("off")
    tampered = code.replace(co_code=bytes(raw))
    assert bytecode._tight_entry(tampered) is tampered
    # A code with the name already (the function's own ``x.ticks``): the entry reads that one.
    named = code.replace(co_names=(*code.co_names, "ticks"))
    assert bytecode._tight_entry(named).co_names == named.co_names
    # No None among the constants: nothing to push for an untimed call.
    nothing = code.replace(co_consts=tuple("none" if value is None else value for value in code.co_consts))
    assert bytecode._tight_entry(nothing) is nothing


def test_a_bound_site_that_stays_cheap_leaves_more_calls_untimed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The grown period reaches the entry: the site's timed call grants its next every - 1
    # calls to the entry's countdown, which makes no call into the runtime.
    monkeypatch.setattr(_core, "_GROW_AFTER", 20)
    _core.configure(timing_every=4, timing_after=20, timing_below=10.0)
    m = load(SKIPPING)
    for _ in range(10):
        for i in range(200):
            m.maybe(i)
        runtime.snapshot()  # a fold
    site = _core._sites[(m.__name__, "maybe")]
    assert site.every == 4 * _core._GROW_MAX
    assert calls_into_the_runtime(lambda: m.maybe(1)) == 1  # the first call after the fold: timed
    assert slots_left(site) == site.every - 1
    assert calls_into_the_runtime(lambda: [m.maybe(i) for i in range(site.every - 1)]) == 0
    row = rows(m)["maybe"]
    assert row["count"] == 2_000 + site.every and row["untimed"] > 2_000 - 2_000 // 8


HOOKED = '''
    def hooked(hook):
        hook()
        return 1


    def down(n):
        return 0 if n == 0 else 1 + down(n - 1)
'''


class Racing:
    """A site's ``ticks`` (3.11) that runs ``race()`` inside its count of the slots left,
    after reading it: what other threads may do between that count and the step that
    replaces the iterator (``_core._unused``): take slots, or replace it."""

    def __init__(self, slots: int, race) -> None:  # type: ignore[no-untyped-def]
        self.left, self.race = slots, race

    def __iter__(self) -> Racing:
        return self

    def __next__(self) -> int:
        if self.left:
            self.left -= 1
            return self.left
        raise StopIteration

    def __length_hint__(self) -> int:
        left, race = self.left, self.race
        self.race = None
        if race is not None:
            race()
        return left


def sampled_hooked(every: int = 4) -> tuple[types.ModuleType, _core._Site]:
    _core.configure(timing_every=every, timing_after=20, timing_below=10.0)
    m = load(HOOKED)
    for _ in range(40):
        m.hooked(int)
    runtime.snapshot()  # a fold: the next call is timed
    site = _core._sites[(m.__name__, "hooked")]
    assert site.every == every
    return m, site


@pytest.mark.skipif(not _core._TICKS, reason="3.11: untimed calls take slots from an iterator")
@pytest.mark.parametrize("race", ["slots taken", "replaced by a fold"])
def test_a_grant_counts_the_slots_other_threads_take_or_a_fold_takes_during_it(race: str) -> None:
    """A timed call's end() counts the slots left in the iterator it replaces; slots taken
    after the count (other threads' untimed calls) are added after the swap (``_settle``),
    and an iterator replaced during the count (a fold, another grant) is counted again
    (``_grant``). Either way every call is counted once."""
    m, site = sampled_hooked()
    folded = []

    def install() -> None:  # (inside the timed call: another thread's grant of 3 slots)
        if race == "slots taken":
            site.ticks = Racing(3, lambda: [m.hooked(int) for _ in range(2)])
        else:
            site.ticks = Racing(3, lambda: folded.append(_core._take(site)))
        site.granted += 3

    m.hooked(install)  # timed (the fold left no slot); its end() grants 3 in place of the Racing
    assert slots_left(site) == 3
    for _ in range(100):
        m.hooked(int)
    made = 40 + 1 + 100 + (2 if race == "slots taken" else 0)
    assert len(folded) == (race == "replaced by a fold")
    assert sum(entry[0] + entry[4] for entry in folded) + rows(m)["hooked"]["count"] == made


@pytest.mark.skipif(not _core._TICKS, reason="3.11: untimed calls take slots from an iterator")
def test_a_withdrawal_counts_the_slots_taken_during_its_count() -> None:
    m, site = sampled_hooked()
    m.hooked(int)  # timed: 3 slots granted
    site.ticks = Racing(3, lambda: [m.hooked(int) for _ in range(2)])  # (the same 3, racing)
    _core._withdraw(site)  # (as a change of mode or of sampling does)
    assert site.ticks is _core._NO_TICKS and slots_left(site) == 0
    m.hooked(int)  # timed: none left
    assert rows(m)["hooked"]["count"] == 40 + 1 + 2 + 1


@pytest.mark.skipif(not _core._TICKS, reason="3.11: untimed calls take slots from an iterator")
def test_a_test_whose_first_fold_has_only_untimed_calls_takes_its_minimum_from_its_timed_ones() -> None:
    # A fold between a timed call's count and its grant (another thread's test switch, here
    # inside the grant's count) leaves the next test untimed calls and no timed one: its
    # first fold has calls and a minimum of 0, which the timed calls after it must replace.
    m, site = sampled_hooked()

    def install() -> None:
        site.ticks = Racing(3, lambda: runtime.set_current_test("t::a"))
        site.granted += 3

    runtime.set_current_test("t::before")
    m.hooked(install)  # timed, counted; the switch to t::a runs before its grant
    assert runtime.current_test() == "t::a" and slots_left(site) == 3
    for _ in range(3):
        m.hooked(int)  # untimed
    runtime.snapshot()  # t::a's first fold: three calls, none timed
    m.hooked(int)  # timed (the fold took the slots left: none)
    runtime.set_current_test(None)
    per_test = {row["test"]: row for row in runtime.snapshot(per_test=True) if row["module"] == m.__name__}
    a = per_test["t::a"]
    assert (per_test["t::before"]["count"], a["count"], a["untimed"]) == (1, 4, 3)
    assert 0 < a["min_ns"] <= a["max_ns"]


def test_rows_without_a_timed_call_take_no_part_in_the_minimum() -> None:
    # The rows of a sampled function: some tests may have only untimed calls (min and max 0).
    # The function's minimum, and a merge of snapshots (xdist workers), are the timed calls'.
    timed = {"module": "m", "name": "f", "count": 5, "total_ns": 900, "min_ns": 150, "max_ns": 250,
             "errors": 0, "exceptions": {}, "estimated": True, "untimed": 3, "total_error_ns": 40}
    untimed = dict(timed, count=2, total_ns=400, min_ns=0, max_ns=0, untimed=2)
    for order in ([untimed, timed], [timed, untimed], [untimed, timed, untimed]):
        merged = runtime.merge_snapshots([[row] for row in order])
        assert (merged[0]["min_ns"], merged[0]["max_ns"], merged[0]["count"]) == (
            150, 250, sum(row["count"] for row in order))
    assert runtime.merge_snapshots([[untimed], [untimed]])[0]["min_ns"] == 0


def test_recursive_calls_of_a_sampled_site_are_counted_once_each_in_their_test() -> None:
    # An outer call's end() grants in place of an iterator its inner calls left half used.
    _core.configure(timing_every=4, timing_after=20, timing_below=10.0)
    m = load(HOOKED)
    for _ in range(20):
        m.down(3)
    runtime.set_current_test("t::a")
    for depth in range(12):
        assert m.down(depth) == depth
    runtime.set_current_test("t::b")
    for depth in (5, 2, 7):
        m.down(depth)
    runtime.set_current_test(None)
    by_test = {row["test"]: (row["count"], row["untimed"]) for row in runtime.snapshot(per_test=True)
               if row["module"] == m.__name__ and row["name"] == "down"}
    assert by_test["t::a"][0] == sum(depth + 1 for depth in range(12))
    assert by_test["t::b"][0] == 6 + 3 + 8
    assert by_test["t::a"][1] > 0, "sampled: some of the calls untimed"


def test_a_bound_site_whose_calls_raise_is_sampled_as_any_other() -> None:
    # A parser that raises for control flow: every call raises. Its timed calls go through
    # raised(), which must count them toward the decision and grant the untimed ones, as
    # end_site does (before, such a site never decided and was timed on every call).
    _core.configure(timing_every=4, timing_after=20, timing_below=10.0)
    m = load(SKIPPING)
    raised = 0
    for _ in range(5):
        for i in range(100):
            try:
                m.maybe(-1 - i)
            except m.Boom:
                raised += 1
        runtime.snapshot()  # a fold
    site = _core._sites[(m.__name__, "maybe")]
    assert site.every == 4
    row = rows(m)["maybe"]
    assert row["count"] == row["errors"] == raised == 500 and row["exceptions"] == {"Boom": 500}
    assert row["estimated"] is True and 500 - 20 - 480 // 4 - 5 <= row["untimed"] < 480
    assert row["min_ns"] <= row["total_ns"] / row["count"] <= row["max_ns"]


MIXED = '''
    class Boom(Exception):
        pass


    class Bang(LookupError):
        pass


    def mixed(x):
        if x % 3 == 0:
            raise Boom(x)
        if x % 3 == 1:
            raise Bang(x)
        if x % 5 == 2:
            raise StopIteration  # not an error (an iterator's end)
        return x
'''


def test_untimed_calls_that_raise_keep_every_error_and_its_class() -> None:
    # A sampled site's untimed calls that raise take raises[True], which counts the error
    # inline, and a fold every 512 errors counts them by class: every count exact, classes
    # included, StopIteration not an error, and the per-test map too.
    _core.configure(timing_every=4, timing_after=20, timing_below=10.0)
    m = load(MIXED)
    outcomes = {"Boom": 0, "Bang": 0, "StopIteration": 0, "returned": 0}
    runtime.set_current_test("t::one")
    for x in range(3_000):
        try:
            m.mixed(x)
            outcomes["returned"] += 1
        except m.Boom:
            outcomes["Boom"] += 1
        except m.Bang:
            outcomes["Bang"] += 1
        except StopIteration:
            outcomes["StopIteration"] += 1
    runtime.set_current_test(None)
    site = _core._sites[(m.__name__, "mixed")]
    assert site.every > 0
    row = rows(m)["mixed"]
    assert row["count"] == 3_000 and row["untimed"] > 2_000
    assert row["errors"] == outcomes["Boom"] + outcomes["Bang"] == 2_000
    assert row["exceptions"] == {"Boom": outcomes["Boom"], "Bang": outcomes["Bang"]}
    per_test = {r["test"]: r for r in runtime.snapshot(per_test=True) if r["module"] == m.__name__}
    assert per_test["t::one"]["errors"] == 2_000 and per_test["t::one"]["count"] == 3_000
