"""Per-test attribution and the snapshots the pytest plugin ships between xdist workers."""

from __future__ import annotations

import json
import threading

from pytest_telemetry_inject import runtime

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
