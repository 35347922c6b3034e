"""Self time: sampled by a thread of the runtime's own, charged to the innermost instrumented
function of each thread, never to the runtime's own code, and shown in every report."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import pytest

from pytest_telemetry_inject.runtime import _core, report

from .conftest import rows_of

SOURCE = '''
    import time
    def spin(seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    def leaf():
        _telemetry_t = _telemetry.start()
        try:
            spin(0.004)
        finally:
            _telemetry.end("leaf", _telemetry_t)
    def outer():
        _telemetry_t = _telemetry.start()
        try:
            spin(0.002)
            for _ in range(2):
                leaf()
        finally:
            _telemetry.end("outer", _telemetry_t)
    def tiny():
        _telemetry_t = _telemetry.start()
        try:
            return 1
        finally:
            _telemetry.end("tiny", _telemetry_t)
    def c_work():
        _telemetry_t = _telemetry.start()
        try:
            return sorted(range(200000, 0, -1))[0]
        finally:
            _telemetry.end("c_work", _telemetry_t)
    def caller_of_tiny(n):
        _telemetry_t = _telemetry.start()
        try:
            for _ in range(n):
                tiny()
        finally:
            _telemetry.end("caller_of_tiny", _telemetry_t)
'''


def _sampled(kit, every: float = 0.001):  # type: ignore[no-untyped-def]
    _core.configure(self_time=every)
    return kit.load(SOURCE)


def test_self_time_splits_a_callers_time_from_its_callees(kit) -> None:
    m = _sampled(kit)
    _core.set_current_test("t::split")
    for _ in range(40):
        m.outer()  # 2 ms of its own, 8 ms in leaf() per call
    _core.configure(self_time=0)
    rows = rows_of(m)
    outer, leaf = rows["outer"], rows["leaf"]
    assert outer["count"] == 40 and leaf["count"] == 80
    # A caller's self time leaves out its instrumented callees; a leaf's is most of its total
    # (its own plain-Python helper, spin(), counts as its own).
    assert outer["self_ns"] < 0.5 * outer["total_ns"], outer
    assert leaf["self_ns"] > 0.6 * leaf["total_ns"], leaf
    assert leaf["self_ns"] > 2 * outer["self_ns"], (leaf, outer)
    assert outer["self_samples"] and leaf["self_samples"]
    info = _core.self_time()
    assert info is not None and info["interval_s"] == 0.001 and info["samples"] >= info["charged"] > 0
    per_test = rows_of(m, per_test=True)
    assert per_test[("t::split", "leaf")]["self_ns"] > 0


def test_self_time_is_never_more_than_the_total(kit) -> None:
    m = _sampled(kit)
    for _ in range(30):
        m.leaf()
    _core.configure(self_time=0)
    for row in _core.snapshot() + _core.snapshot(per_test=True):
        assert 0 <= row["self_ns"] <= row["total_ns"]
    merged = _core.merge_snapshots([_core.snapshot(), _core.snapshot()])
    assert all(r["self_ns"] <= r["total_ns"] for r in merged)
    twice = next(r for r in merged if r["name"] == "leaf" and r["module"] == m.__name__)
    assert rows_of(m)["leaf"]["self_ns"] * 2 == twice["self_ns"] > 0


def test_the_runtimes_own_time_is_charged_to_no_function(kit) -> None:
    """Time in the runtime's code is the tool's (counted apart, charged to no function), and
    time a function spends in C calls is its own, though the thread hands over the GIL only
    when the next function (the runtime's end(), say) is entered."""
    m = _sampled(kit)
    rows_before = _core.self_time()
    deadline = time.perf_counter() + 0.6
    while time.perf_counter() < deadline:
        m.caller_of_tiny(20000)
        m.c_work()
    _core.configure(self_time=0)
    info = _core.self_time()
    assert info is not None and rows_before is not None
    rows = rows_of(m)
    assert rows["c_work"]["self_ns"] > 0.5 * rows["c_work"]["total_ns"], rows["c_work"]
    charged = rows["caller_of_tiny"]["self_ns"] + rows["tiny"]["self_ns"]
    assert charged <= rows["caller_of_tiny"]["total_ns"]
    assert info["tool_ns"] < 0.5 * rows["c_work"]["total_ns"], info


def test_threads_are_sampled_each_on_its_own(kit) -> None:
    m = _sampled(kit)
    worker = threading.Thread(target=lambda: [m.leaf() for _ in range(50)])
    worker.start()
    for _ in range(15):
        m.outer()
    worker.join()
    _core.configure(self_time=0)
    rows = rows_of(m)
    assert rows["leaf"]["count"] == 50 + 30
    assert rows["leaf"]["self_ns"] > rows["outer"]["self_ns"]


def _running(ident: int | None, expected: bool) -> bool:
    """Whether the thread ``ident`` runs (waiting up to 5 s for it to be as ``expected``)."""
    deadline = time.monotonic() + 5
    while (ident in sys._current_frames()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return ident in sys._current_frames()


def _sampler_ident() -> int | None:
    deadline = time.monotonic() + 5
    while _core._sampler is not None and _core._sampler.ident is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return _core._sampler.ident if _core._sampler is not None else None


def test_the_sampler_is_invisible_to_threading_and_stops(kit) -> None:
    _core.configure(self_time=0.001)
    first = _sampler_ident()
    assert first is not None and _running(first, True)  # a thread of its own...
    assert first not in {t.ident for t in threading.enumerate()}  # ...that threading does not list
    _core.configure(self_time=0.002)  # a new interval: the old thread stops, a new one starts
    second = _sampler_ident()
    assert second is not None and _running(second, True)
    if second != first:  # (the system may give the new thread the old one's id)
        assert not _running(first, False)
    _core.configure(self_time=0)
    assert _core._sampler is None and not _running(second, False)


def test_self_time_off_by_default_and_none_reported(kit) -> None:
    m = kit.load(SOURCE)
    m.leaf()
    assert _core.self_time() is None
    assert rows_of(m)["leaf"]["self_ns"] == 0
    assert "self ms" not in _core.format_report()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_samples_with_a_thread_of_its_own(kit, tmp_path) -> None:
    m = _sampled(kit)
    out = tmp_path / "child.json"
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            for _ in range(20):
                m.leaf()
            rows = rows_of(m)
            out.write_text(json.dumps({"leaf": rows["leaf"], "info": _core.self_time()}))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    _core.configure(self_time=0)
    child = json.loads(out.read_text())
    assert child["leaf"]["count"] == 20 and child["leaf"]["self_ns"] > 0 and child["info"]["samples"] > 0


def test_every_report_carries_self_time(kit, tmp_path) -> None:
    m = _sampled(kit)
    _core.configure(keep_events=True, max_events=10)
    _core.set_current_test("t::one")
    for _ in range(10):
        m.outer()
    # (On a loaded machine the sampler's thread may get few turns: 10 calls give it some 20
    # samples in outer's own time, 80 in leaf's. More calls, in a test of their own, until
    # outer has one.)
    _core.set_current_test("t::more")
    deadline = time.monotonic() + 20
    more = 0
    while not rows_of(m)["outer"]["self_ns"] and time.monotonic() < deadline:
        m.outer()
        more += 1
    _core.set_current_test(None)
    _core.configure(self_time=0)
    built = report.from_runtime()
    outer = next(f for f in built["functions"] if f["name"] == "outer" and f["module"] == m.__name__)
    assert outer["self_ns"] > 0 and built["self_time"]["samples"] > 0
    test = next(t for t in built["tests"] if t["test"] == "t::one")
    assert test["calls"] == 30 and test["events_kept"] == 10
    assert {f["name"]: f["count"] for f in test["functions"]}.items() >= {"outer": 10, "leaf": 20}.items()
    assert "self ms" in report.format_terminal(built).splitlines()[0]
    page = report.render_html(built)
    data = json.loads(page.split('id="telemetry-data">', 1)[1].split("</script>", 1)[0])
    charted = next(t for t in data["tests"] if t[0] == "t::one")
    assert charted[4] < charted[1] and {r[0].split(":")[1]: r[1] for r in charted[5]}["leaf"] == 20
    trace = _core.chrome_trace(_core.events(), dropped=_core.dropped_events(), functions=_core.snapshot(),
                               self_time=_core.self_time())
    counted = {f["name"]: f for f in trace["otherData"]["functions"]}
    # (Every call of the session: t::one's 20 and the two of each call made in t::more.)
    assert counted[f"{m.__name__}:leaf"]["count"] == 20 + 2 * more and counted[f"{m.__name__}:outer"]["self_ns"] > 0
    assert trace["otherData"]["dropped_events"] == 20 + 3 * more  # (10 kept in all)
