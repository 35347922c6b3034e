"""The try form as the plugin compiles it on the fly (``engine/compiler.py``): the start time on
the frame's value stack, ``end`` on the way out, ``raised`` (not ``fail`` then ``end``) on the
way out by an exception; in every runtime mode."""

from __future__ import annotations

import asyncio
import itertools
import sys
import textwrap
import types

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.engine import bytecode
from pytest_telemetry_inject.engine.compiler import compile_mapped
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.settings import Settings

SOURCE = '''
    import asyncio


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


    def stops(it):
        return next(it)


    async def coro(x):
        await asyncio.sleep(0)
        return leaf(x)


    async def agen(n):
        for i in range(n):
            yield i


    def recurse(n):
        return 0 if n == 0 else 1 + recurse(n - 1)
'''
_names = itertools.count()


def load(style: str = "try"):  # type: ignore[no-untyped-def]
    text = textwrap.dedent(SOURCE)
    name = f"ti_otf_{next(_names)}"
    result = Engine(Settings(style=style, target="runtime"), cache=None).instrument(text.encode(), f"{name}.py",
                                                                                      import_name="")
    code = compile_mapped(result.output.decode(), result.get_line_map(), f"{name}.py")
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(code, module.__dict__)
    return module


def rows(module) -> dict:  # type: ignore[no-untyped-def]
    runtime.flush()
    return {r["name"]: r for r in runtime.snapshot() if r["module"] == module.__name__}


def exercise(m) -> None:  # type: ignore[no-untyped-def]
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
    with pytest.raises(StopIteration):
        m.stops(iter(()))  # nor is an exhausted iterator's StopIteration
    assert asyncio.run(m.coro(3)) == 6

    async def consume():  # type: ignore[no-untyped-def]
        return [i async for i in m.agen(3)]
    assert asyncio.run(consume()) == [0, 1, 2]
    assert m.recurse(5) == 5


EXPECTED = {"leaf": (9, 0), "outer": (1, 0), "fails": (3, 2), "gen": (2, 0), "stops": (1, 0), "coro": (1, 0),
            "agen": (1, 0), "recurse": (6, 0)}


@pytest.mark.parametrize("style", ["try", "with"])
def test_aggregate_counts_and_errors_are_exact(style: str) -> None:
    m = load(style)
    if bytecode.SUPPORTED:
        assert m.outer.__code__.co_varnames == ("n", "total", "i")  # no _telemetry_t
    exercise(m)
    found = rows(m)
    assert {name: (row["count"], row["errors"]) for name, row in found.items()} == EXPECTED
    assert found["fails"]["exceptions"] == {"Boom": 2}
    assert found["outer"]["min_ns"] > 0 and found["outer"]["max_ns"] >= found["outer"]["min_ns"]


def test_disabled_records_nothing_and_changes_nothing() -> None:
    runtime.configure(disabled=True)
    m = load()
    exercise(m)
    assert all(row["count"] == 0 for row in rows(m).values())


def test_a_call_that_spans_a_mode_change_is_counted_once() -> None:
    """Started in one mode (a float start time), ended in another (a span class's end)."""
    m = load()
    gen = m.gen(2)
    next(gen)
    runtime.configure(keep_events=True)
    assert list(gen) == [2]
    runtime.configure(keep_events=False)
    gen = m.gen(2)
    next(gen)
    runtime.configure(disabled=True)
    with pytest.raises(ValueError):
        gen.throw(ValueError("x"))
    runtime.configure(disabled=False)
    assert rows(m)["gen"]["count"] >= 1


def test_events_have_the_right_parents_and_errors() -> None:
    runtime.configure(keep_events=True)
    m = load()
    assert m.outer(3) == 6
    with pytest.raises(m.Boom):
        m.fails(1)
    runtime.flush()
    events = [e for e in runtime.events() if e["module"] == m.__name__]
    outer = next(e for e in events if e["name"] == "outer")
    leaves = [e for e in events if e["name"] == "leaf"]
    assert len(leaves) == 3 and all(leaf["parent"] == outer["id"] for leaf in leaves)
    assert next(e for e in events if e["name"] == "fails")["exception"] == "Boom"
    assert rows(m)["fails"]["errors"] == 1


def test_opentelemetry_spans_record_the_error() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime.configure(otel=True, otel_provider=provider)
    m = load()
    for _ in range(2):  # the first call of a site begins on a placeholder, the second by name
        m.outer(2)
        with pytest.raises(m.Boom):
            m.fails(1)
    spans = exporter.get_finished_spans()
    failed = [s for s in spans if s.name == "fails"]
    assert len(failed) == 2 and all(s.status.status_code is StatusCode.ERROR for s in failed)
    assert all(any(e.name == "exception" for e in s.events) for s in failed)
    outer = [s for s in spans if s.name == "outer"]
    leaves = [s for s in spans if s.name == "leaf"]
    assert len(leaves) == 4 and {leaf.parent.span_id for leaf in leaves} == {s.context.span_id for s in outer}
    assert rows(m)["fails"]["errors"] == 2
