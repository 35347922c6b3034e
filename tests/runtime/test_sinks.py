"""The sinks: JSONL events, the Chrome trace file, OpenTelemetry spans (the real SDK)."""

from __future__ import annotations

import asyncio
import json

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.runtime import _core

SOURCE = '''
    import asyncio
    def leaf(i):
        with _telemetry.span("leaf"):
            if i == 2:
                raise KeyError(i)
            return i
    def outer():
        with _telemetry.span("outer"):
            for i in range(4):
                try:
                    leaf(i)
                except KeyError:
                    pass
    async def task(i):
        with _telemetry.span("task"):
            await asyncio.sleep(0.005 * (i + 1))  # started in order, ended in order: overlapping
            leaf(0)
    async def fan_out():
        with _telemetry.span("fan_out"):
            await asyncio.gather(*(task(i) for i in range(3)))
    def gen():
        with _telemetry.generator_span("gen"):
            yield 1
            yield 3
    def consume():
        with _telemetry.span("consume"):
            return [leaf(x) for x in gen()]
'''


def test_jsonl_events(kit) -> None:
    path = kit.tmp_path / "events.jsonl"
    runtime.configure(jsonl=str(path))
    m = kit.load(SOURCE)
    runtime.set_current_test("tests/x.py::t")
    m.outer()
    runtime.set_current_test(None)
    runtime.flush()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["name"] for e in events] == ["leaf"] * 4 + ["outer"]
    outer = events[-1]
    assert all(e["parent"] == outer["id"] and e["test"] == "tests/x.py::t" for e in events[:4])
    assert [e.get("exception") for e in events[:4]] == [None, None, "KeyError", None]
    assert set(outer) == {"name", "module", "start_ns", "ts_ns", "duration_ns", "pid", "tid", "thread", "id",
                          "parent", "test"}
    assert outer["module"] == m.__name__ and outer["thread"] == "MainThread" and outer["parent"] is None
    assert abs(outer["ts_ns"] / 1e9 - __import__("time").time()) < 60
    for _ in range(1200):  # more than the spill threshold: written without flush()
        m.outer()
    assert len(path.read_text().splitlines()) >= _core._SPILL_AT


def test_chrome_trace_file(kit) -> None:
    path = kit.tmp_path / "trace.json"
    runtime.configure(trace=str(path))
    m = kit.load(SOURCE)
    m.outer()
    asyncio.run(m.fan_out())
    m.consume()
    runtime.flush()
    document = json.loads(path.read_text())
    events = document["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == 5 + 1 + 3 + 3 + 1 + 1 + 2
    assert all(set(e) >= {"name", "ph", "ts", "dur", "pid", "tid"} for e in complete)
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in complete} <= set(names), "every track has a thread name"
    assert any(name == "MainThread" for name in names.values())
    assert any("overlapping" in name for name in names.values()), "interleaved tasks need a second track"
    # Microseconds: a leaf of the first outer() is shorter than outer(), which lasts > 0 us.
    outer = next(e for e in complete if e["name"] == "outer")
    assert 0 < outer["dur"] < 1e6 and outer["ts"] > 0
    # Each track nests properly: a span that starts inside another ends inside it.
    tracks: dict = {}
    for e in complete:
        tracks.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in tracks.values():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list = []
        for start, end in spans:
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1] + 1e-6, "partially overlapping spans on one track"
            stack.append(end)
    assert document["otherData"]["producer"] == "pytest-telemetry-inject"


def test_trace_only_mode_does_not_touch_contextvars(kit) -> None:
    runtime.configure(trace=str(kit.tmp_path / "t.json"))
    m = kit.load('''
        import contextvars
        def f():
            with _telemetry.span("f"):
                return contextvars.copy_context()
    ''')
    assert _core._current not in m.f()


@pytest.fixture
def otel(kit):  # type: ignore[no-untyped-def]
    """A real SDK TracerProvider with an in-memory exporter, given to the runtime."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime.configure(otel=True, otel_provider=provider)
    return provider, exporter


def test_opentelemetry_spans_nest_under_the_current_span(kit, otel) -> None:
    provider, exporter = otel
    m = kit.load(SOURCE)
    test_tracer = provider.get_tracer("the-pytest-plugin")
    with test_tracer.start_as_current_span("test: tests/x.py::t") as test_span:
        m.outer()
        asyncio.run(m.fan_out())
        m.consume()
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    outer = next(s for s in spans if s.name == "outer")
    assert outer.parent.span_id == test_span.get_span_context().span_id
    assert outer.context.trace_id == test_span.get_span_context().trace_id
    leaves = [s for s in spans if s.name == "leaf" and s.parent.span_id == outer.context.span_id]
    assert len(leaves) == 4
    fan = next(s for s in spans if s.name == "fan_out")
    tasks = [s for s in spans if s.name == "task"]
    assert len(tasks) == 3 and all(t.parent.span_id == fan.context.span_id for t in tasks)
    assert all(by_id[s.parent.span_id].name == "task" for s in spans
               if s.name == "leaf" and s.parent.span_id not in (outer.context.span_id,)
               and by_id.get(s.parent.span_id) and by_id[s.parent.span_id].name != "consume")
    consume = next(s for s in spans if s.name == "consume")
    gen = next(s for s in spans if s.name == "gen")
    assert gen.parent.span_id == consume.context.span_id
    consumer_leaves = [s for s in spans if s.name == "leaf" and s.parent.span_id == consume.context.span_id]
    assert len(consumer_leaves) == 2, "the generator's span became current for its consumer"
    attributes = outer.attributes
    assert attributes["code.function.name"] == f"{m.__name__}.outer" and attributes["code.file.path"] == m.__file__
    assert attributes["code.line.number"] == m.outer.__code__.co_firstlineno and len(attributes) == 3
    assert outer.instrumentation_scope.name == m.__name__


def test_opentelemetry_exceptions_are_recorded_with_error_status(kit, otel) -> None:
    from opentelemetry.trace import StatusCode

    provider, exporter = otel
    m = kit.load(SOURCE)
    with pytest.raises(KeyError):
        m.leaf(2)
    m.leaf(1)
    failed, fine = exporter.get_finished_spans()
    assert failed.status.status_code == StatusCode.ERROR and "KeyError" in failed.status.description
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.events[0].attributes["exception.type"] == "KeyError"
    assert fine.status.status_code == StatusCode.UNSET and not fine.events
    assert kit.rows_of(m)["leaf"]["count"] == 2, "the aggregate is kept in the OpenTelemetry mode too"


def test_opentelemetry_decorated_generators_are_current_per_step(kit, otel) -> None:
    provider, exporter = otel
    m = kit.load('''
        def leaf():
            with _telemetry.span("leaf"):
                return 0
        @_telemetry.instrument("gen")
        def gen():
            leaf()
            yield 1
        def consume():
            with _telemetry.span("consume"):
                for _ in gen():
                    leaf()
    ''')
    m.consume()
    spans = exporter.get_finished_spans()
    gen = next(s for s in spans if s.name == "gen")
    consume = next(s for s in spans if s.name == "consume")
    parents = sorted(s.parent.span_id for s in spans if s.name == "leaf")
    assert sorted([gen.context.span_id, consume.context.span_id]) == parents


def test_opentelemetry_is_found_when_a_provider_is_set_later(kit) -> None:
    (kit.tmp_path / "latemod.py").write_text(kit.header + "def f():\n    with _telemetry.span('f'):\n        return 1\n"
                                             "def g():\n    with _telemetry.span('g'):\n        return 2\n")
    result = kit.run_python(f'''
        import json, sys
        sys.path.insert(0, {str(kit.tmp_path)!r})
        from pytest_telemetry_inject import runtime
        import latemod
        latemod.f()
        before = "opentelemetry" in sys.modules
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        latemod.g()          # a new site: noticed when it is made
        latemod.f()
        print(json.dumps({{"before": before, "spans": [s.name for s in exporter.get_finished_spans()]}}))
    ''')
    assert kit.last_json(result) == {"before": False, "spans": ["g", "f"]}


def test_opentelemetry_is_never_imported_when_off(kit) -> None:
    result = kit.run_python('''
        import json, sys
        from pytest_telemetry_inject import runtime
        t = runtime.tracer("m")
        def f():
            with t.span("f"):
                return 1
        for _ in range(3000):
            f()
        runtime.configure(keep_events=True)
        f()
        runtime.flush()
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")))
    ''')
    assert kit.last_json(result) == []


def test_a_sink_that_cannot_write_counts_what_it_lost_and_says_so(kit, tmp_path) -> None:
    """A JSONL file in a folder that does not exist, a trace file over a folder: the calls
    are still counted, the events lost are counted per sink with the error, and a process
    says so on stderr at exit."""
    from pytest_telemetry_inject.runtime import _core

    (tmp_path / "a-folder.json").mkdir()
    _core.configure(jsonl=str(tmp_path / "missing" / "events.jsonl"), trace=str(tmp_path / "a-folder.json"))
    m = kit.load('''
        def f(x):
            with _telemetry.span("f"):
                return x
    ''')
    for i in range(10):
        m.f(i)
    _core.flush()
    losses = _core.sink_losses()
    assert losses["jsonl"]["lost"] == 10 and "FileNotFoundError" in losses["jsonl"]["error"]
    assert losses["trace"]["lost"] == 10 and "write: " in losses["trace"]["error"]
    assert [r["count"] for r in _core.snapshot() if r["module"] == m.__name__] == [10]
    _core.configure(jsonl="", trace="")
    _core.reset()
    assert _core.sink_losses() == {}

    script = tmp_path / "lose.py"
    script.write_text(
        "from pytest_telemetry_inject import runtime\n"
        "t = runtime.tracer('m')\n"
        "for i in range(3):\n"
        "    with t.span('f'):\n"
        "        pass\n")
    import os
    import subprocess
    import sys

    env = {**os.environ, "TELEMETRY_INJECT_JSONL": str(tmp_path / "missing" / "x.jsonl")}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0
    assert "telemetry: 3 events could not be written to the jsonl sink" in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1
