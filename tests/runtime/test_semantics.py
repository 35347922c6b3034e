"""What a span records for each kind of function, and that user code behaves as before:
sync, async, generators, async generators, recursion, threads, asyncio tasks, the decorator."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import traceback

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.engine import bytecode
from pytest_telemetry_inject.runtime import _core

MS = 1_000_000


def test_sync_calls_count_total_min_max(kit) -> None:
    m = kit.load('''
        import time
        def f(seconds):
            with _telemetry.span("f"):
                time.sleep(seconds)
                return seconds * 2
    ''')
    assert [m.f(0), m.f(0.02), m.f(0.01)] == [0, 0.04, 0.02]
    row = kit.rows_of(m)["f"]
    assert row["count"] == 3 and row["errors"] == 0
    assert row["max_ns"] >= 20 * MS and row["min_ns"] < 10 * MS
    assert row["total_ns"] >= 30 * MS and row["total_ns"] >= row["max_ns"] + row["min_ns"]
    assert row["file"] == m.__file__ and row["line"] == m.f.__code__.co_firstlineno  # found once


def test_exception_is_the_same_object_with_its_traceback(kit) -> None:
    m = kit.load('''
        ERROR = ValueError("boom")
        def f():
            with _telemetry.span("f"):
                raise ERROR
        def g():
            with _telemetry.span("g"):
                return f()
    ''')
    with pytest.raises(ValueError) as info:
        m.g()
    assert info.value is m.ERROR
    assert info.value.__context__ is None and info.value.__cause__ is None
    frames = traceback.extract_tb(info.value.__traceback__)
    assert [frame.name for frame in frames][-2:] == ["g", "f"]
    assert not any(frame.filename == _core.__file__ for frame in frames), "the runtime re-raised"
    rows = kit.rows_of(m)
    assert rows["f"]["errors"] == rows["g"]["errors"] == 1
    assert rows["f"]["exceptions"] == {"ValueError": 1}


def test_errors_are_counted_by_exception_type(kit) -> None:
    m = kit.load('''
        class Custom(Exception):
            pass
        def f(kind):
            with _telemetry.span("f"):
                if kind:
                    raise kind("x")
                return 1
    ''')
    for kind in (ValueError, ValueError, KeyError, m.Custom, None):
        try:
            m.f(kind)
        except Exception:
            pass
    row = kit.rows_of(m)["f"]
    assert row["count"] == 5 and row["errors"] == 4
    assert row["exceptions"] == {"ValueError": 2, "KeyError": 1, "Custom": 1}


def test_generator_span_lives_from_first_step_to_exhaustion(kit) -> None:
    m = kit.load('''
        def gen(n):
            with _telemetry.generator_span("gen"):
                for i in range(n):
                    yield i
                return "done"
    ''')
    import time

    idle = m.gen(3)
    assert "gen" not in kit.rows_of(m) or kit.rows_of(m)["gen"]["count"] == 0, "counted before the first step"
    items = []
    for item in idle:
        items.append(item)
        time.sleep(0.015)  # the consumer's time between steps is inside the span
    assert items == [0, 1, 2]
    row = kit.rows_of(m)["gen"]
    assert row["count"] == 1 and row["errors"] == 0
    assert row["total_ns"] >= 40 * MS


def test_generator_close_and_garbage_collection_are_not_errors(kit) -> None:
    m = kit.load('''
        def gen():
            with _telemetry.generator_span("gen"):
                yield 1
                yield 2
    ''')
    first = m.gen()
    assert next(first) == 1
    first.close()
    second = m.gen()
    next(second)
    del second  # CPython closes it right away
    row = kit.rows_of(m)["gen"]
    assert row["count"] == 2 and row["errors"] == 0


def test_exception_thrown_into_a_generator_propagates(kit) -> None:
    m = kit.load('''
        def gen():
            with _telemetry.generator_span("gen"):
                yield 1
                yield 2
    ''')
    g = m.gen()
    next(g)
    error = KeyError("thrown")
    with pytest.raises(KeyError) as info:
        g.throw(error)
    assert info.value is error
    assert kit.rows_of(m)["gen"]["errors"] == 1


def test_stop_iteration_from_next_is_not_an_error(kit) -> None:
    m = kit.load('''
        class Countdown:
            def __init__(self, n):
                self.n = n
            def __iter__(self):
                return self
            def __next__(self):
                with _telemetry.span("Countdown.__next__"):
                    if not self.n:
                        raise StopIteration
                    self.n -= 1
                    return self.n
    ''')
    assert list(m.Countdown(3)) == [2, 1, 0]
    row = kit.rows_of(m)["Countdown.__next__"]
    assert row["count"] == 4 and row["errors"] == 0


def test_async_function_span_includes_its_awaits(kit) -> None:
    m = kit.load('''
        import asyncio
        async def fetch(x):
            with _telemetry.span("fetch"):
                await asyncio.sleep(0.03)
                return x + 1
    ''')
    assert asyncio.run(m.fetch(1)) == 2
    row = kit.rows_of(m)["fetch"]
    assert row["count"] == 1 and row["total_ns"] >= 30 * MS


def test_async_generators_and_exceptions_thrown_through_them(kit) -> None:
    m = kit.load('''
        import asyncio
        async def agen(n):
            with _telemetry.generator_span("agen"):
                for i in range(n):
                    await asyncio.sleep(0)
                    yield i
        async def failing():
            with _telemetry.generator_span("failing"):
                yield 1
                raise OSError("inside")
    ''')
    error = ValueError("thrown in")

    async def scenario() -> tuple:
        collected = [item async for item in m.agen(3)]
        thrown = m.agen(5)
        await thrown.__anext__()
        try:
            await thrown.athrow(error)
        except ValueError as caught:
            assert caught is error
        inside = None
        try:
            async for _ in m.failing():
                pass
        except OSError as caught:
            inside = caught
        return collected, inside

    collected, inside = asyncio.run(scenario())
    assert collected == [0, 1, 2] and str(inside) == "inside"
    rows = kit.rows_of(m)
    assert rows["agen"]["count"] == 2 and rows["agen"]["errors"] == 1
    assert rows["agen"]["exceptions"] == {"ValueError": 1}
    assert rows["failing"]["count"] == 1 and rows["failing"]["exceptions"] == {"OSError": 1}


@pytest.mark.parametrize("style", ["with", "decorator"])
def test_recursion_counts_every_depth(kit, style: str) -> None:
    runtime.configure(keep_events=True)
    if style == "with":
        m = kit.load('''
            def fact(n):
                with _telemetry.span("fact"):
                    return 1 if n <= 1 else n * fact(n - 1)
        ''')
    else:
        m = kit.load('''
            @_telemetry.instrument("fact")
            def fact(n):
                return 1 if n <= 1 else n * fact(n - 1)
        ''')
    assert m.fact(30) == 265252859812191058636308480000000
    assert m.fact(3) == 6
    row = kit.rows_of(m)["fact"]
    assert row["count"] == 33
    events = {e["id"]: e for e in runtime.events() if e["module"] == m.__name__}
    depths = []
    for event in events.values():
        depth, node = 1, event
        while node["parent"] is not None:
            parent = events[node["parent"]]
            assert parent["start_ns"] <= node["start_ns"]
            assert node["start_ns"] + node["duration_ns"] <= parent["start_ns"] + parent["duration_ns"]
            depth, node = depth + 1, parent
        depths.append(depth)
    assert sorted(depths) == sorted(list(range(1, 31)) + [1, 2, 3])
    outermost = max(events.values(), key=lambda e: e["duration_ns"])
    assert outermost["duration_ns"] == row["max_ns"] and outermost["parent"] is None


def test_counts_are_exact_under_threads(kit) -> None:
    m = kit.load('''
        def f(i):
            with _telemetry.span("f"):
                if i % 50 == 0:
                    raise ValueError(i)
                return i
    ''')
    threads_n, calls = 8, 4000
    caught = [0] * threads_n

    def work(index: int) -> None:
        for i in range(calls):
            try:
                m.f(i)
            except ValueError:
                caught[index] += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    row = kit.rows_of(m)["f"]
    assert row["count"] == threads_n * calls
    assert row["errors"] == sum(caught) == threads_n * calls // 50


def test_asyncio_tasks_and_threads_get_the_right_parent(kit) -> None:
    runtime.configure(keep_events=True)
    m = kit.load('''
        import asyncio, contextvars, threading
        async def child(i):
            with _telemetry.span("child"):
                await asyncio.sleep(0.01 * i)
                return i
        async def parent():
            with _telemetry.span("parent"):
                return await asyncio.gather(child(1), child(2))
        def leaf():
            with _telemetry.span("leaf"):
                return 1
        def spawner():
            with _telemetry.span("spawner"):
                plain = threading.Thread(target=leaf)
                plain.start(); plain.join()
                context = contextvars.copy_context()
                carried = threading.Thread(target=context.run, args=(leaf,))
                carried.start(); carried.join()
    ''')

    async def two_parents() -> list:
        return await asyncio.gather(m.parent(), m.parent())

    assert asyncio.run(two_parents()) == [[1, 2], [1, 2]]
    m.spawner()
    events = [e for e in runtime.events() if e["module"] == m.__name__]
    by_id = {e["id"]: e for e in events}
    parents = [e for e in events if e["name"] == "parent"]
    children = [e for e in events if e["name"] == "child"]
    assert len(parents) == 2 and len(children) == 4
    assert all(p["parent"] is None for p in parents)
    for p in parents:
        mine = [c for c in children if c["parent"] == p["id"]]
        assert len(mine) == 2, "each task's children belong to the parent that created them"
        end = p["start_ns"] + p["duration_ns"]
        assert all(p["start_ns"] <= c["start_ns"] and c["start_ns"] + c["duration_ns"] <= end for c in mine)
    spawner = next(e for e in events if e["name"] == "spawner")
    leaves = sorted((e for e in events if e["name"] == "leaf"), key=lambda e: e["start_ns"])
    assert leaves[0]["parent"] is None, "a new thread starts with an empty context"
    assert leaves[1]["parent"] == spawner["id"], "a copied context carries the current span"
    assert leaves[0]["tid"] != spawner["tid"] and leaves[0]["thread"] != spawner["thread"]
    assert all(e["parent"] is None or e["parent"] in by_id for e in events)


def test_a_generator_span_never_becomes_the_callers_current_span(kit) -> None:
    runtime.configure(keep_events=True)
    m = kit.load('''
        def gen():
            with _telemetry.generator_span("gen"):
                yield 1
                yield 2
        def inner():
            with _telemetry.span("inner"):
                return 0
        def consume():
            with _telemetry.span("consume"):
                for _ in gen():
                    inner()
    ''')
    m.consume()
    events = {e["name"]: e for e in runtime.events() if e["module"] == m.__name__}
    assert events["gen"]["parent"] == events["consume"]["id"]
    assert events["inner"]["parent"] == events["consume"]["id"], "the generator's span leaked to its caller"
    assert _core._current.get() is None


def test_decorator_handles_every_kind_and_keeps_metadata(kit) -> None:
    m = kit.load('''
        import asyncio
        @_telemetry.instrument("plain")
        def plain(a, b=2, *rest, key=None, **more):
            """Plain doc."""
            return a + b
        @_telemetry.instrument("coro")
        async def coro(x: int) -> int:
            """Coro doc."""
            await asyncio.sleep(0)
            return x * 3
        @_telemetry.instrument("gen")
        def gen(n):
            total = 0
            for i in range(n):
                total += (yield i) or 0
            return total
        @_telemetry.instrument("agen")
        async def agen(n):
            for i in range(n):
                yield i
        class K:
            @staticmethod
            @_telemetry.instrument("K.s")
            def s(x):
                return x
            @_telemetry.instrument("K.c")
            @classmethod
            def c(cls):
                return cls.__name__
    ''')
    assert m.plain(1) == 3 and m.plain.__doc__ == "Plain doc." and m.plain.__name__ == "plain"
    assert str(inspect.signature(m.plain)) == "(a, b=2, *rest, key=None, **more)"
    assert m.plain.__wrapped__.__name__ == "plain" and m.plain is not m.plain.__wrapped__
    assert inspect.iscoroutinefunction(m.coro) and str(inspect.signature(m.coro)) == "(x: int) -> int"
    assert asyncio.run(m.coro(2)) == 6
    assert inspect.isgeneratorfunction(m.gen) and inspect.isasyncgenfunction(m.agen)
    g = m.gen(3)
    assert next(g) == 0 and g.send(10) == 1 and g.send(5) == 2
    with pytest.raises(StopIteration) as stop:
        g.send(1)
    assert stop.value.value == 16, "the generator's return value is kept"

    async def collect() -> list:
        return [i async for i in m.agen(3)]

    assert asyncio.run(collect()) == [0, 1, 2]
    assert m.K.s(4) == 4 and m.K.c() == "K"
    rows = kit.rows_of(m)
    assert {name: rows[name]["count"] for name in ("plain", "coro", "gen", "agen", "K.s", "K.c")} == \
        {"plain": 1, "coro": 1, "gen": 1, "agen": 1, "K.s": 1, "K.c": 1}
    where = (rows["plain"]["file"], rows["plain"]["line"])
    assert where == (m.__file__, m.plain.__wrapped__.__code__.co_firstlineno), "the wrapper's location"


def test_decorated_generators_forward_throw_and_close(kit) -> None:
    runtime.configure(keep_events=True)
    m = kit.load('''
        log = []
        @_telemetry.instrument("gen")
        def gen():
            try:
                yield 1
                yield 2
            except KeyError:
                log.append("caught")
                yield 3
            finally:
                log.append("closed")
        @_telemetry.instrument("agen")
        async def agen():
            try:
                yield 1
                yield 2
            finally:
                log.append("aclosed")
    ''')
    g = m.gen()
    assert next(g) == 1
    assert g.throw(KeyError("k")) == 3, "the exception reached the wrapped generator"
    g.close()
    assert m.log == ["caught", "closed"]

    async def scenario() -> None:
        a = m.agen()
        assert await a.__anext__() == 1
        error = RuntimeError("into agen")
        try:
            await a.athrow(error)
        except RuntimeError as caught:
            assert caught is error
        b = m.agen()
        await b.__anext__()
        await b.aclose()

    asyncio.run(scenario())
    assert m.log[-2:] == ["aclosed", "aclosed"]
    rows = kit.rows_of(m)
    assert rows["gen"]["count"] == 1 and rows["gen"]["errors"] == 0
    assert rows["agen"]["count"] == 2 and rows["agen"]["exceptions"] == {"RuntimeError": 1}


def test_decorated_generator_is_current_during_its_steps_only(kit) -> None:
    runtime.configure(keep_events=True)
    m = kit.load('''
        def inner():
            with _telemetry.span("inner"):
                return 0
        @_telemetry.instrument("gen")
        def gen():
            inner()
            yield 1
            inner()
            yield 2
        def consume():
            with _telemetry.span("consume"):
                for _ in gen():
                    inner()
    ''')
    m.consume()
    events = [e for e in runtime.events() if e["module"] == m.__name__]
    gen = next(e for e in events if e["name"] == "gen")
    consume = next(e for e in events if e["name"] == "consume")
    parents = sorted(e["parent"] for e in events if e["name"] == "inner")
    assert gen["parent"] == consume["id"]
    assert parents.count(gen["id"]) == 2 and parents.count(consume["id"]) == 2


def test_disabled_spans_are_no_ops_and_the_decorator_returns_the_function(kit) -> None:
    runtime.configure(disabled=True)
    m = kit.load('''
        def f(x):
            with _telemetry.span("f"):
                if x < 0:
                    raise ValueError(x)
                return x
        def plain():
            return 7
        decorated = _telemetry.instrument("plain")(plain)
    ''')
    assert m.f(2) == 2
    with pytest.raises(ValueError):
        m.f(-1)
    assert m.decorated is m.plain
    assert m._telemetry.span("f") is m._telemetry.span("g") is _core._OFF
    assert "f" not in kit.rows_of(m)
    runtime.configure(disabled=False)
    m.f(1)
    assert kit.rows_of(m)["f"]["count"] == 1, "enabling again takes effect on existing tracers"


def test_no_telemetry_is_the_identity_and_the_version_is_set() -> None:
    def f() -> int:
        return 1

    assert runtime.no_telemetry(f) is f
    assert runtime.RUNTIME_VERSION >= 2
    assert runtime.tracer("x.y") is runtime.tracer("x.y")
    assert isinstance(runtime.tracer("x.y"), runtime.Tracer)


def test_contextvars_are_untouched_in_the_default_mode(kit) -> None:
    m = kit.load('''
        import contextvars
        def f():
            with _telemetry.span("f"):
                return contextvars.copy_context()
    ''')
    inside = m.f()
    assert _core._current not in inside, "the default mode must not set the span contextvar"
    assert contextvars.copy_context().get(_core._current) is None


_RACE = '''
    import json, sys, threading
    {prelude}
    from pytest_telemetry_inject import runtime
    from pytest_telemetry_inject.runtime import _core
    from pytest_telemetry_inject.engine.pipeline import Engine
    from pytest_telemetry_inject.settings import Settings

    SOURCE = b"def f(i):\\n    if i % 50 == 0:\\n        raise ValueError(i)\\n    return i\\n"
    style, bound, _ = "{style}".partition("-bound")  # ("try", "-bound", "") when bound
    result = Engine(Settings(style=style, target="runtime"), cache=None).instrument(SOURCE, "race.py")
    code = compile(result.output, "race.py", "exec")
    if bound:  # as the import hook loads it: end() given the site itself (bind_sites)
        from pytest_telemetry_inject.engine.compiler import compile_mapped
        from pytest_telemetry_inject.plugin.importhook import _bound
        code = _bound(compile_mapped(result.output.decode(), result.get_line_map(), "race.py", bindable=True), "race")
        assert any(isinstance(c, _core._Site) for k in code.co_consts if hasattr(k, "co_consts") for c in k.co_consts)
    namespace = {{"__name__": "race"}}
    exec(code, namespace)
    f = namespace["f"]
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    threads_n, calls = 6, 6000
    caught = [0] * threads_n
    done, halfway, switched = threading.Event(), threading.Event(), threading.Event()

    def work(index):
        for i in range(calls):
            if i == calls // 2:  # the second half after a switch, however the threads are scheduled
                halfway.set()
                switched.wait(60)
            try:
                f(i)
            except ValueError:
                caught[index] += 1

    def fold():  # folds (test switches, snapshots) racing with the counting
        n, seen = 0, None
        while not done.is_set():
            runtime.set_current_test("t%d" % n)  # never the same test twice
            if "{folds}" == "switches-and-snapshots":
                runtime.snapshot()
            elif "{folds}" == "switches-and-resampling":
                # Sampled sites are judged slow, and slow ones cheap, by turns: the folds
                # change the site's sampling back and forth while the threads count.
                runtime.configure(timing_after=32, timing_below=1e-12 if n % 2 else 10.0)
            n += 1
            if halfway.is_set():
                if seen is None:
                    seen = n
                elif n > seen:
                    switched.set()

    folder = threading.Thread(target=fold)
    folder.start()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    done.set()
    folder.join()
    # A test switch folds only the functions called since the previous one: none may be
    # left with calls or errors pending after it.
    runtime.set_current_test("last")
    pending = sum(s.n + len(s.errs) for s in list(_core._sites.values()) if s.module == "race")
    rows = [r for r in runtime.snapshot(per_test=True) if r["module"] == "race"]
    print(json.dumps({{"locked": _core._FREE_THREADED, "count": sum(r["count"] for r in rows),
                      "errors": sum(r["errors"] for r in rows), "caught": sum(caught),
                      "tests": len(rows), "pending": pending,
                      "min": min(r["min_ns"] for r in rows if r["count"] > r.get("untimed", 0)),
                      "max": max(r["max_ns"] for r in rows)}}))
'''


@pytest.mark.parametrize("folds", ["switches-and-snapshots", "switches", "switches-and-resampling"])
@pytest.mark.parametrize("style", ["try", "try-bound", "with"])
@pytest.mark.parametrize("locked", [False, True], ids=["gil", "free-threaded-paths"])
def test_counts_stay_exact_while_folds_race_with_calls(kit, style: str, locked: bool, folds: str) -> None:
    # The aggregate counts a call with unlocked attribute updates (atomic under the GIL);
    # a free-threaded build counts under a lock. The second case forces that choice (the
    # interpreter here has a GIL) so that the locked paths are proved too.
    if style == "try-bound" and not bytecode.SUPPORTED:
        pytest.skip("the try form is bound on CPython 3.11 to 3.13")
    prelude = "sys._is_gil_enabled = lambda: False" if locked else ""
    result = kit.last_json(kit.run_python(_RACE.format(prelude=prelude, style=style, folds=folds),
                                          timeout=240))
    assert result["locked"] is locked
    assert result["pending"] == 0
    assert result["count"] == 6 * 6000
    assert result["errors"] == result["caught"] == 6 * 6000 // 50
    assert result["tests"] >= 2, "the folds did switch tests during the run"
    # (of the rows with timed calls: the try form counts an escaping error in fail(), before
    # end() counts its call, so a switch in between leaves a test an error and no call, min
    # 0; and a sampled site's untimed calls may reach a test that has none of its timed ones)
    assert 0 < result["min"] <= result["max"]
