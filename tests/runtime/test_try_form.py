"""The try form (``--style try``, the pytest plugin's default) in every runtime mode.

The modules are instrumented by the engine itself, so the calling convention is the real
one: ``_telemetry_t = _telemetry.start()`` / ``fail("Q", _telemetry_t)`` / ``end("Q", _telemetry_t)``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import sys
import textwrap
import traceback

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.settings import Settings

SOURCE = '''
    class Boom(Exception):
        pass


    def leaf(x):
        return x * 2


    def outer(n):
        total = 0
        for i in range(n):
            total += leaf(i)
        return total


    def fails(x):
        if x:
            raise Boom(f"no {x}")
        return x


    def gen(n):
        for i in range(n):
            yield leaf(i)


    async def coro(x):
        await asyncio.sleep(0)
        return leaf(x)


    async def agen(n):
        for i in range(n):
            yield i


    def early(x):
        if x:
            return "early"
        y = x + 1
        return y
'''
_names = itertools.count()


def load(tmp_path, source: str = SOURCE):
    text = "import asyncio\n" + textwrap.dedent(source)
    result = Engine(Settings(style="try", target="runtime"), cache=None).instrument(text.encode(), "m.py")
    assert result.output is not None and "_telemetry.start()" in result.output.decode()
    name = f"ti_try_{next(_names)}"
    path = tmp_path / f"{name}.py"
    path.write_bytes(result.output)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rows(module) -> dict:
    runtime.flush()
    return {r["name"]: r for r in runtime.snapshot() if r["module"] == module.__name__}


def exercise(m) -> None:
    assert m.outer(4) == 12
    for x in (0, 1, 2):
        try:
            m.fails(x)
        except m.Boom:
            pass
    assert list(m.gen(3)) == [0, 2, 4]
    g = m.gen(5)
    next(g)
    g.close()  # closing a generator is not an error
    assert asyncio.run(m.coro(3)) == 6

    async def consume():
        return [i async for i in m.agen(3)]
    assert asyncio.run(consume()) == [0, 1, 2]
    assert (m.early(1), m.early(0)) == ("early", 1)


def test_aggregate_counts_and_errors_are_exact(tmp_path) -> None:
    m = load(tmp_path)
    exercise(m)
    found = rows(m)
    counts = {name: (row["count"], row["errors"]) for name, row in found.items()}
    assert counts == {"leaf": (9, 0), "outer": (1, 0), "fails": (3, 2), "gen": (2, 0), "coro": (1, 0),
                      "agen": (1, 0), "early": (2, 0)}
    assert found["fails"]["exceptions"] == {"Boom": 2}
    assert found["outer"]["min_ns"] > 0 and found["outer"]["max_ns"] >= found["outer"]["min_ns"]


def test_the_exception_is_the_same_object_with_its_traceback(tmp_path) -> None:
    m = load(tmp_path)
    error = m.Boom("mine")

    def raise_it(_x):
        raise error

    m.leaf = raise_it
    with pytest.raises(m.Boom) as info:
        m.outer(1)
    assert info.value is error
    frames = [(f.name, f.line) for f in traceback.extract_tb(info.value.__traceback__)]
    assert ("outer", "total += leaf(i)") in frames
    assert not any("_telemetry" in (line or "") for _name, line in frames)


def test_disabled_records_nothing_and_changes_nothing(tmp_path) -> None:
    runtime.configure(disabled=True)
    m = load(tmp_path)
    exercise(m)
    assert all(row["count"] == 0 for row in rows(m).values())


def test_events_have_the_right_parents(tmp_path) -> None:
    runtime.configure(keep_events=True)
    m = load(tmp_path)
    assert m.outer(3) == 6
    runtime.flush()
    events = [e for e in runtime.events() if e["module"] == m.__name__]
    by_name: dict = {}
    for event in events:
        by_name.setdefault(event["name"], []).append(event)
    outer = by_name["outer"][0]
    assert len(by_name["leaf"]) == 3
    assert all(leaf["parent"] == outer["id"] for leaf in by_name["leaf"])


def test_opentelemetry_spans_are_named_nested_and_carry_the_code_attributes(tmp_path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime.configure(otel=True, otel_provider=provider)
    m = load(tmp_path)
    with provider.get_tracer("plugin").start_as_current_span("test") as test_span:
        m.outer(2)
        with pytest.raises(m.Boom):
            m.fails(1)
    spans = exporter.get_finished_spans()
    outer = next(s for s in spans if s.name == "outer")
    assert outer.parent.span_id == test_span.get_span_context().span_id
    leaves = [s for s in spans if s.name == "leaf"]
    assert len(leaves) == 2 and all(s.parent.span_id == outer.context.span_id for s in leaves)
    assert outer.attributes["code.function.name"] == f"{m.__name__}.outer"
    assert outer.attributes["code.file.path"] == m.__file__
    failed = next(s for s in spans if s.name == "fails")
    assert failed.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in failed.events)
    assert {s.name for s in spans} <= {"outer", "leaf", "fails", "test"}
    assert rows(m)["fails"]["errors"] == 1


def test_opentelemetry_spans_of_later_calls_start_under_their_own_names(tmp_path) -> None:
    """The try form's start() has no name: the first call of a function begins its span on a
    placeholder and end() renames it; later calls begin under the real name, with the code
    attributes given at start. Either way the spans, their parents and counts are the same."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    started: list[str] = []

    class Recording(SimpleSpanProcessor):
        def on_start(self, span, parent_context=None):  # type: ignore[no-untyped-def]
            started.append(span.name)
            super().on_start(span, parent_context)

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(Recording(exporter))
    runtime.configure(otel=True, otel_provider=provider)
    m = load(tmp_path)
    for _ in range(3):
        exercise(m)
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names.count("outer") == 3 and names.count("leaf") == 27 and names.count("gen") == 6
    assert set(names) == {"outer", "leaf", "fails", "gen", "coro", "agen", "early"}
    by_id = {s.context.span_id: s for s in spans}
    parents = [by_id[s.parent.span_id].name if s.parent else None for s in spans if s.name == "leaf"]
    assert parents.count("outer") == 12 and parents.count("coro") == 3  # outer(4) and coro(3), 3 times
    assert all(s.attributes["code.function.name"] == f"{s.instrumentation_scope.name}.{s.name}" for s in spans)
    # After the first round every span began under its own name.
    first_round = len(spans) // 3
    assert set(started[first_round:]) <= set(names), set(started[first_round:]) - set(names)
    assert rows(m)["leaf"]["count"] == 27


def test_a_call_that_spans_a_change_of_mode_is_counted(tmp_path) -> None:
    m = load(tmp_path, '''
        import pytest_telemetry_inject.runtime as rt

        def switch(settings):
            rt.configure(**settings)
            return 1
    ''')
    assert m.switch({"keep_events": True}) == 1   # started in the aggregate mode, ends in events
    assert m.switch({"keep_events": False}) == 1  # started with events, ends in the aggregate mode
    runtime.configure(disabled=True)
    assert m.switch({"disabled": False}) == 1     # started disabled: nothing measured
    assert rows(m)["switch"]["count"] == 2
