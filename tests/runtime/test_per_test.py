"""Per-test attribution and the snapshots the pytest plugin ships between xdist workers."""

from __future__ import annotations

import gc
import json
import threading

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.runtime import _core

SOURCE = '''
    import time
    def f(seconds=0.0):
        with _telemetry.span("f"):
            if seconds < 0:
                raise ValueError(seconds)
            time.sleep(seconds)
            return seconds
'''


def test_calls_are_attributed_to_the_current_test(kit) -> None:
    m = kit.load(SOURCE)
    m.f()  # before any test
    runtime.set_current_test("tests/a.py::one")
    assert runtime.current_test() == "tests/a.py::one"
    for _ in range(3):
        m.f()
    worker = threading.Thread(target=lambda: [m.f() for _ in range(4)])
    worker.start()
    worker.join()
    runtime.set_current_test("tests/a.py::two")
    m.f(0.01)
    try:
        m.f(-1)
    except ValueError:
        pass
    runtime.set_current_test(None)
    m.f()
    per_test = kit.rows_of(m, per_test=True)
    assert {key: row["count"] for key, row in per_test.items()} == {
        (None, "f"): 2, ("tests/a.py::one", "f"): 7, ("tests/a.py::two", "f"): 2}
    two = per_test[("tests/a.py::two", "f")]
    assert two["errors"] == 1 and two["exceptions"] == {"ValueError": 1} and two["max_ns"] >= 10_000_000
    total = kit.rows_of(m)["f"]
    assert total["count"] == 11 and total["errors"] == 1 and "test" not in total
    assert total["max_ns"] == max(r["max_ns"] for r in per_test.values())
    assert total["min_ns"] == min(r["min_ns"] for r in per_test.values())
    assert total["total_ns"] == sum(r["total_ns"] for r in per_test.values())


def test_a_finished_tests_aggregates_are_packed_and_read_back_exactly(kit) -> None:
    # When a test ends its aggregates are final: packed into bytes, which the garbage
    # collector does not track (a list each made cachetools' suite ~10 more young
    # collections and one more full one). Read back, the figures are the same; a test run
    # again (as pytest-rerunfailures does) adds to its own; an aggregate with exceptions
    # keeps its names.
    m = kit.load(SOURCE)
    runtime.set_current_test("t::a")
    for _ in range(3):
        m.f()
    runtime.set_current_test("t::b")
    m.f(0.002)
    try:
        m.f(-1)
    except ValueError:
        pass
    runtime.set_current_test(None)
    before = kit.rows_of(m, per_test=True)
    stats = next(site.stats for site in _core._sites.values() if site.module == m.__name__ and site.name == "f")
    assert isinstance(stats["t::a"], bytes) and not gc.is_tracked(stats["t::a"])
    assert isinstance(stats["t::b"], list)  # (its exception names)
    runtime.set_current_test("t::a")  # run again
    m.f()
    runtime.set_current_test(None)
    after = kit.rows_of(m, per_test=True)
    assert isinstance(stats["t::a"], bytes)
    a_before, a_after = before[("t::a", "f")], after[("t::a", "f")]
    assert (a_before["count"], a_after["count"]) == (3, 4)
    assert a_after["total_ns"] > a_before["total_ns"] and a_after["min_ns"] <= a_before["min_ns"]
    assert after[("t::b", "f")] == before[("t::b", "f")]
    assert before[("t::b", "f")]["exceptions"] == {"ValueError": 1} and before[("t::b", "f")]["max_ns"] >= 2_000_000
    total = kit.rows_of(m)["f"]
    assert total["count"] == 6 and total["errors"] == 1
    assert total["total_ns"] == sum(r["total_ns"] for r in after.values())


def test_the_objects_the_collector_tracks_do_not_grow_with_the_tests(kit) -> None:
    m = kit.load(SOURCE)
    runtime.set_current_test(None)
    gc.collect()
    before = len(gc.get_objects())
    for n in range(2000):
        runtime.set_current_test(f"t::{n}")
        m.f()
    runtime.set_current_test(None)
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert grown < 200, grown  # (a list an aggregate: 2,000 more)
    rows = kit.rows_of(m, per_test=True)
    assert len(rows) == 2000 and all(row["count"] == 1 for row in rows.values())


def test_snapshots_are_plain_json(kit) -> None:
    m = kit.load(SOURCE)
    runtime.set_current_test("t::x")
    m.f()
    for per_test in (False, True):
        rows = runtime.snapshot(per_test=per_test)
        assert json.loads(json.dumps(rows)) == rows


def test_merge_is_exact(kit) -> None:
    """Three workers (real processes), each running different tests, merged."""
    (kit.tmp_path / "mergemod.py").write_text(kit.header + '''
import time
def f(seconds):
    with _telemetry.span("f"):
        if seconds < 0:
            raise KeyError(seconds)
        time.sleep(seconds)
def g():
    with _telemetry.span("g"):
        return 1
''')
    plans = {"w0": [("t::a", [0.0, 0.002, -1])], "w1": [("t::a", [0.004]), ("t::b", [0.0, 0.0])],
             "w2": [("t::c", [-1, -1, 0.006])]}
    snapshots = []
    for plan in plans.values():
        result = kit.run_python(f'''
            import json, sys
            sys.path.insert(0, {str(kit.tmp_path)!r})
            from pytest_telemetry_inject import runtime
            import mergemod
            for test, calls in {plan!r}:
                runtime.set_current_test(test)
                for seconds in calls:
                    try:
                        mergemod.f(seconds)
                    except KeyError:
                        pass
                runtime.set_current_test(None)
            print(json.dumps({{"functions": runtime.snapshot(), "tests": runtime.snapshot(per_test=True)}}))
        ''')
        snapshots.append(kit.last_json(result))
    merged = {r["name"]: r for r in runtime.merge_snapshots(s["functions"] for s in snapshots)}
    rows = [r for s in snapshots for r in s["functions"] if r["name"] == "f"]
    f = merged["f"]
    assert f["count"] == 9 == sum(r["count"] for r in rows)
    assert f["errors"] == 3 and f["exceptions"] == {"KeyError": 3}
    assert f["total_ns"] == sum(r["total_ns"] for r in rows)
    assert f["min_ns"] == min(r["min_ns"] for r in rows) and f["max_ns"] == max(r["max_ns"] for r in rows)
    assert f["max_ns"] >= 6_000_000
    per_test = {(r["test"], r["name"]): r for r in runtime.merge_snapshots(s["tests"] for s in snapshots)}
    assert {key: row["count"] for key, row in per_test.items()} == {
        ("t::a", "f"): 4, ("t::b", "f"): 2, ("t::c", "f"): 3}
    assert per_test[("t::a", "f")]["errors"] == 1 and per_test[("t::c", "f")]["errors"] == 2


def test_merge_keeps_the_smallest_nonzero_min() -> None:
    base = {"module": "m", "name": "f", "file": None, "line": None, "errors": 0, "exceptions": {}}
    idle = dict(base, count=0, total_ns=0, min_ns=0, max_ns=0)
    busy = dict(base, count=2, total_ns=30, min_ns=10, max_ns=20, file="m.py", line=3)
    other = dict(base, count=1, total_ns=7, min_ns=7, max_ns=7, errors=1, exceptions={"E": 1})
    (merged,) = runtime.merge_snapshots([[idle], [busy], [other]])
    assert (merged["count"], merged["total_ns"], merged["min_ns"], merged["max_ns"]) == (3, 37, 7, 20)
    assert merged["errors"] == 1 and merged["exceptions"] == {"E": 1}
    assert (merged["file"], merged["line"]) == ("m.py", 3)
    assert runtime.merge_snapshots([]) == []


def test_reset_forgets_calls_but_keeps_sites(kit) -> None:
    m = kit.load(SOURCE)
    runtime.configure(keep_events=True)
    m.f()
    runtime.reset()
    row = kit.rows_of(m)["f"]
    assert row["count"] == 0 and row["min_ns"] == 0 and runtime.events() == []
    m.f()
    assert kit.rows_of(m)["f"]["count"] == 1


MANY = "\n".join(f'''
    def g{i}(fail=False):
        _telemetry_t = _telemetry.start()
        try:
            if fail:
                raise KeyError({i})
            return {i}
        except BaseException:
            _telemetry_t = _telemetry.fail("g{i}", _telemetry_t)
            raise
        finally:
            _telemetry.end("g{i}", _telemetry_t)
''' for i in range(300))


def test_the_switch_folds_the_sites_called_since_the_last_one_and_no_other(kit) -> None:
    from pytest_telemetry_inject.runtime import _core

    m = kit.load(MANY)
    runtime.set_current_test("t::all")
    for i in range(300):
        getattr(m, f"g{i}")()
    assert len(_core._recent) == 300  # every site, once, on its first call
    runtime.set_current_test("t::three")
    assert _core._recent == []
    for _ in range(5):
        m.g1(), m.g7(), m.g250()
    try:
        m.g7(fail=True)
    except KeyError:
        pass
    # (g7 twice: its first call, its first error since the fold; a second fold of it is free)
    assert sorted(site.name for site in _core._recent) == ["g1", "g250", "g7", "g7"]
    runtime.set_current_test(None)
    per_test = {(row["test"], row["name"]): row for row in runtime.snapshot(per_test=True)}
    assert sum(1 for (test, _) in per_test if test == "t::all") == 300
    three = {name: row["count"] for (test, name), row in per_test.items() if test == "t::three"}
    assert three == {"g1": 5, "g7": 6, "g250": 5}
    assert per_test[("t::three", "g7")]["exceptions"] == {"KeyError": 1}


def test_an_error_counted_before_the_switch_and_its_call_after_are_both_kept(kit) -> None:
    # The try form counts an escaping exception in fail() and the call in end(): a switch in
    # between folds the error into the first test, the call into the next.
    m = kit.load(MANY)
    tracer = m._telemetry
    runtime.set_current_test("t::one")
    m.g3()
    runtime.set_current_test("t::two")
    state = tracer.start()
    try:
        raise KeyError(3)
    except KeyError:
        state = tracer.fail("g3", state)
    runtime.set_current_test("t::three")  # the error alone is pending
    tracer.end("g3", state)
    runtime.set_current_test(None)
    rows = {(row["test"], row["name"]): row for row in runtime.snapshot(per_test=True)}
    assert rows[("t::one", "g3")]["count"] == 1 and rows[("t::one", "g3")]["errors"] == 0
    assert rows[("t::two", "g3")]["errors"] == 1
    assert rows[("t::three", "g3")]["count"] == 1
    total = {row["name"]: row for row in runtime.snapshot()}["g3"]
    assert total["count"] == 2 and total["errors"] == 1
