"""A forked child starts clean and leaves its parent alone; a fault inside the runtime never
changes what the user's function returns or raises."""

from __future__ import annotations

import os
import re
import sys
import textwrap
import traceback

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.runtime import _core

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")

SOURCE = '''
    ERROR = LookupError("original")
    def f(x):
        with _telemetry.span("f"):
            if x < 0:
                raise ERROR
            return [x, x * 2]
    def gen(n):
        with _telemetry.generator_span("gen"):
            yield from range(n)
    @_telemetry.instrument("deco")
    def deco(x):
        if x < 0:
            raise ERROR
        return {"x": x}
'''


@needs_fork
def test_fork_child_starts_clean_and_the_parent_is_unaffected(kit) -> None:
    # In a fresh interpreter: forking the (multi-threaded) xdist worker is asking for trouble.
    source = "def f():\n    with _telemetry.span('f'):\n        return 1\n"
    (kit.tmp_path / "forkmod.py").write_text(kit.header + source)
    trace = kit.tmp_path / "trace.json"
    result = kit.run_python(f'''
        import json, os, sys
        sys.path.insert(0, {str(kit.tmp_path)!r})
        from pytest_telemetry_inject import runtime
        import forkmod
        runtime.configure(keep_events=True, trace={str(trace)!r})
        runtime.set_current_test("parent::test")
        for _ in range(5):
            forkmod.f()
        def count():
            return sum(r["count"] for r in runtime.snapshot() if r["module"] == "forkmod")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                state = {{"count": count(), "events": len(runtime.events()),
                          "per_test": runtime.snapshot(per_test=True)}}
                forkmod.f(); forkmod.f()
                state["after"] = count()
                state["event_pids"] = sorted({{e["pid"] for e in runtime.events()}})
                runtime.flush()
                os.write(write, json.dumps(state).encode())
            finally:
                os._exit(0)
        os.close(write)
        data = b""
        while chunk := os.read(read, 65536):
            data += chunk
        os.waitpid(pid, 0)
        child = json.loads(data)
        forkmod.f()
        runtime.flush()
        print(json.dumps({{"child": child, "child_pid": pid, "parent": count(), "parent_events": len(runtime.events()),
                           "parent_pid": os.getpid()}}))
    ''')
    out = kit.last_json(result)
    child = out["child"]
    assert child["count"] == 0 and child["events"] == 0 and child["per_test"] == [], "the child inherited calls"
    assert child["after"] == 2 and child["event_pids"] == [out["child_pid"]]
    assert out["parent"] == 6 and out["parent_events"] == 6, "the child's calls leaked into the parent"
    import json

    parent_trace = json.loads(trace.read_text())
    child_trace = json.loads((kit.tmp_path / f"trace.{out['child_pid']}.json").read_text())
    assert {e["pid"] for e in parent_trace["traceEvents"] if e["ph"] == "X"} == {out["parent_pid"]}
    assert len([e for e in child_trace["traceEvents"] if e["ph"] == "X"]) == 2


def _outcome(call):  # type: ignore[no-untyped-def]
    """What a call returns or raises: (value, None) or (None, exception)."""
    try:
        return call(), None
    except Exception as exc:  # noqa: BLE001 - compared by identity below
        return None, exc


def _check_unchanged(m) -> None:  # type: ignore[no-untyped-def]
    assert m.f(3) == [3, 6] and list(m.gen(3)) == [0, 1, 2] and m.deco(2) == {"x": 2}
    for call in (lambda: m.f(-1), lambda: m.deco(-1)):
        value, error = _outcome(call)
        assert value is None and error is m.ERROR
        frames = traceback.extract_tb(error.__traceback__)
        assert frames[-1].name in ("f", "deco") and frames[-1].filename == m.__file__
        # The decorator's wrapper is a frame the exception passes through (as with any
        # decorator); nothing in the runtime re-raises it.
        assert [frame.name for frame in frames if frame.filename == _core.__file__] in ([], ["wrapper"])
        assert error.__context__ is None
        error.__traceback__ = None


@pytest.mark.parametrize("mode", ["agg", "events", "otel"])
def test_corrupted_internals_never_reach_user_code(kit, mode: str) -> None:
    runtime.configure(raise_faults=False)  # faults on purpose: counted and swallowed, as in a program
    if mode == "events":
        runtime.configure(keep_events=True)
    if mode == "otel":
        from opentelemetry.sdk.trace import TracerProvider

        runtime.configure(otel=True, otel_provider=TracerProvider())
    m = kit.load(SOURCE)
    _check_unchanged(m)  # sites exist now
    tracer = m._telemetry
    site = tracer._by_name["f"]

    assert runtime.internal_faults() == {}
    site.total = None  # counting fails inside __exit__ / end()
    _check_unchanged(m)
    site.total = 0.0
    faults = runtime.internal_faults()
    assert faults and all(f["count"] >= 1 and "TypeError" in f["first"] for f in faults.values()), faults
    saved_events = _core._events
    _core._events = None  # the event store is gone
    _check_unchanged(m)
    _core._events = saved_events
    site.errs = "not a list"
    _check_unchanged(m)
    site.errs = []
    saved_by_name = tracer._by_name
    tracer._by_name = None  # the site table is gone: spans fall back to the no-op
    _check_unchanged(m)
    tracer._by_name = saved_by_name
    saved_clocks = _core._clock, _core._seconds
    _core._clock = _core._seconds = None  # even the clocks
    try:
        _check_unchanged(m)
    finally:
        _core._clock, _core._seconds = saved_clocks
    _check_unchanged(m)
    assert kit.rows_of(m)["f"]["count"] >= 2, "the runtime works again once repaired"
    assert sum(f["count"] for f in runtime.internal_faults().values()) >= 6, runtime.internal_faults()
    assert _core._current.get() is None, "a failed span was left current"
    if mode == "otel":
        from opentelemetry import trace

        assert not trace.get_current_span().get_span_context().is_valid


def test_a_failing_sink_loses_its_events_only(kit) -> None:
    broken = kit.tmp_path / "a-directory"
    broken.mkdir()
    runtime.configure(jsonl=str(broken), keep_events=True)  # writing a directory raises
    m = kit.load(SOURCE)
    for i in range(5000):  # past the spill threshold: the sink is called from user code
        assert m.f(i) == [i, 2 * i]
    runtime.flush()
    assert kit.rows_of(m)["f"]["count"] == 5000
    assert len([e for e in runtime.events() if e["module"] == m.__name__]) == 5000, "the other sink lost events"


def test_failing_opentelemetry_processors_do_not_reach_user_code(kit) -> None:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    class Raising(SpanProcessor):
        def __init__(self, where: str) -> None:
            self.where = where

        def on_start(self, span, parent_context=None):  # type: ignore[no-untyped-def]
            if self.where == "start":
                raise RuntimeError("processor on_start")

        def on_end(self, span):  # type: ignore[no-untyped-def]
            if self.where == "end":
                raise RuntimeError("processor on_end")

    runtime.configure(raise_faults=False)  # faults on purpose: counted and swallowed, as in a program
    for where in ("start", "end"):
        provider = TracerProvider()
        provider.add_span_processor(Raising(where))
        runtime.configure(otel=True, otel_provider=provider)
        runtime.reset()
        m = kit.load(SOURCE)
        _check_unchanged(m)
        _check_unchanged(m)
        rows = kit.rows_of(m)
        assert rows["f"]["count"] == 4 and rows["f"]["errors"] == 2, where
        assert rows["deco"]["count"] == 4 and rows["gen"]["count"] == 2, where
        faults = runtime.internal_faults()
        key = "OpenTelemetry span start" if where == "start" else "OpenTelemetry span end"
        assert faults[key]["count"] >= 8 and faults[key]["first"] == f"RuntimeError: processor on_{where}", faults
    assert sys.exc_info() == (None, None, None)


def test_a_fault_is_raised_under_the_runtimes_own_tests(kit) -> None:
    # clean_runtime turns raise_faults on: a fault fails the test that meets it.
    m = kit.load(SOURCE)
    _check_unchanged(m)
    site = m._telemetry._by_name["f"]
    site.total = None
    try:
        with pytest.raises(TypeError):
            m.f(3)
    finally:
        site.total = 0.0
    assert runtime.internal_faults()["span end"]["count"] == 1


def test_faults_swallowed_in_a_program_are_said_at_exit(kit) -> None:
    (kit.tmp_path / "faulty.py").write_text(kit.header + textwrap.dedent(SOURCE))
    result = kit.run_python(f'''
        import sys
        sys.path.insert(0, {str(kit.tmp_path)!r})
        from pytest_telemetry_inject import runtime
        import faulty
        assert faulty.f(3) == [3, 6]
        faulty._telemetry._by_name["f"].total = None
        for _ in range(3):
            assert faulty.f(3) == [3, 6]  # the program goes on
        faults = runtime.internal_faults()
        assert faults["span end"]["count"] == 3 and faults["span end"]["first"].startswith("TypeError"), faults
        print("ok")
    ''', env={"TELEMETRY_INJECT_RAISE_FAULTS": "0"})
    assert result.stdout.strip().endswith("ok")
    # (at exit, flush() meets the broken record too: one more)
    assert re.search(r"telemetry: [34] internal fault\(s\) of the runtime were swallowed, the program went on "
                     r"\(first, in span end: TypeError: ", result.stderr), result.stderr
