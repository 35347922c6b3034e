"""Timing a sample of a hot, cheap site's calls (``timing_every``, ``timing_after``,
``timing_below``): every call is still counted, every error kept, every test's calls
attributed to it; only the totals of the untimed calls are estimated, and the rows say so."""

from __future__ import annotations

import threading

import pytest

from pytest_telemetry_inject.runtime import _core

TRY_FORM = '''
class Boom(Exception):
    pass


def leaf(x):
    _telemetry_t = _telemetry.start()
    try:
        if x < 0:
            raise Boom(x)
        return x + 1
    except BaseException:
        _telemetry_t = _telemetry.fail("leaf", _telemetry_t)
        raise
    finally:
        _telemetry.end("leaf", _telemetry_t)
'''


def sample_fast(every: int = 4, after: int = 10) -> None:
    """Sample every site after ``after`` timed calls, whatever its mean."""
    _core.configure(timing_every=every, timing_after=after, timing_below=10.0)


def call(module, values) -> int:  # type: ignore[no-untyped-def]
    """Call ``leaf`` on each value; the number of errors it raised."""
    raised = 0
    for value in values:
        try:
            module.leaf(value)
        except module.Boom:
            raised += 1
    return raised


def test_counts_and_errors_stay_exact_when_sampled(kit) -> None:  # type: ignore[no-untyped-def]
    sample_fast()
    module = kit.load(TRY_FORM)
    values = [-1 if i % 7 == 3 else i for i in range(1_003)]
    raised = call(module, values)
    row = kit.rows_of(module)["leaf"]
    assert row["count"] == len(values)
    assert row["errors"] == raised == values.count(-1)
    assert row["exceptions"] == {"Boom": raised}
    assert row["estimated"] is True
    # 10 timed before the decision, then one in 4 (errors are timed by fail/end's other path)
    assert len(values) - 10 - (len(values) - 10) // 4 - raised <= row["untimed"] < len(values) - 10
    assert row["min_ns"] <= row["total_ns"] / row["count"] <= row["max_ns"]


def test_a_first_call_that_raises_keeps_its_error_when_its_end_comes_after_the_site_is_sampled(kit) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    # A function's first call raises, and other threads' calls make its site sampled before
    # that call's end() runs (a thread preempted in between, as the race tests of
    # test_semantics.py hit once in some hundred runs). fail() once handed the error to
    # end() in the state, and end() took the call for one of a sampled site's untimed
    # calls: it counted the call and dropped the error.
    sample_fast(every=4, after=10)
    module = kit.load(TRY_FORM)
    tracer = module._telemetry
    state = tracer.start()
    try:
        raise module.Boom(-1)
    except module.Boom:
        state = tracer.fail("leaf", state)
    assert call(module, range(30)) == 0  # the other thread: decided after 10 calls, then sampled
    tracer.end("leaf", state)  # the first call ends now
    row = kit.rows_of(module)["leaf"]
    assert row["count"] == 31
    assert row["errors"] == 1 and row["exceptions"] == {"Boom": 1}


def test_exact_mode_times_every_call(kit) -> None:  # type: ignore[no-untyped-def]
    _core.configure(timing_every=1, timing_after=10, timing_below=10.0)
    module = kit.load(TRY_FORM)
    call(module, range(500))
    row = kit.rows_of(module)["leaf"]
    assert row["count"] == 500
    assert "estimated" not in row and "untimed" not in row and "total_error_ns" not in row


def test_slow_sites_are_never_sampled(kit, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_core, "_BUSY", float("inf"))  # (slow and unhurried: a busy site is sampled)
    _core.configure(timing_every=4, timing_after=10, timing_below=1e-12)
    module = kit.load(TRY_FORM)
    call(module, range(500))
    row = kit.rows_of(module)["leaf"]
    assert row["count"] == 500 and "estimated" not in row


def test_estimate_and_bound(kit) -> None:  # type: ignore[no-untyped-def]
    """The untimed calls at the mean of the calls timed while sampled, within the bound."""
    sample_fast(every=8)
    module = kit.load(TRY_FORM)
    call(module, range(4_000))
    site = _core._sites[(module.__name__, "leaf")]
    row = kit.rows_of(module)["leaf"]
    assert site.sm >= (4_000 - 10) // 8 - 1
    mean_ns = site.ss / site.sm * 1e9
    timed = row["count"] - row["untimed"]
    assert timed < row["count"] // 4
    # total = the timed calls' own durations + untimed * mean, so it lies above the untimed part
    assert row["total_ns"] >= row["untimed"] * mean_ns * 0.999
    assert 0 <= row["total_error_ns"] < row["total_ns"] * 100


def test_bound_formula() -> None:
    site = _core._Site("m", "f", None, None)
    assert _core._estimate(site, 10) == (0.0, 0.0)  # nothing timed yet: nothing to go by
    site.sm, site.ss, site.sq = 1, 2e-6, 4e-12
    assert _core._estimate(site, 10) == pytest.approx((2e-5, 2e-5))  # one timed call: the whole estimate
    site.sm, site.ss, site.sq = 4, 4e-6, 5e-12  # durations 0.5, 0.5, 1.5, 1.5 us: sd 0.5 us
    guess, bound = _core._estimate(site, 8)
    assert guess == pytest.approx(8e-6)
    assert bound == pytest.approx(1.96 * 0.5e-6 * (8 + 64 / 4) ** 0.5)


def test_per_test_call_map_stays_exact(kit) -> None:  # type: ignore[no-untyped-def]
    sample_fast(every=5)
    module = kit.load(TRY_FORM)
    plan = {"t::a": 37, "t::b": 1, "t::c": 0, "t::d": 250, "t::e": 3, "t::f": 1_000}
    for test, calls in plan.items():
        _core.set_current_test(test)
        call(module, range(calls))
    _core.set_current_test(None)
    rows = kit.rows_of(module, per_test=True)
    assert {test: rows[(test, "leaf")]["count"] for test in plan if plan[test]} == {
        test: calls for test, calls in plan.items() if calls}
    assert ("t::c", "leaf") not in rows
    assert any(rows[(test, "leaf")].get("estimated") for test in plan if plan[test] > 20)


def test_a_fold_in_the_middle_of_a_block_loses_no_call(kit) -> None:  # type: ignore[no-untyped-def]
    sample_fast(every=16)
    module = kit.load(TRY_FORM)
    total = 0
    for calls in (100, 3, 17, 1, 40, 5):
        call(module, range(calls))
        total += calls
        assert kit.rows_of(module)["leaf"]["count"] == total  # snapshot() folds mid-block


@pytest.mark.parametrize("change", ["turned-slow", "timing-every-call"])
def test_a_change_of_sampling_keeps_the_calls_counted_since_the_fold(kit, change: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    # A fold (deciding again) or configure() changes a site's sampling while other threads
    # go on counting its calls by the countdown alone: those counted since the last fold
    # must outlive the new countdown (setting it alone once lost hundreds of 36,000 calls
    # in the race tests). Here the calls come first and the change runs alone, as it would
    # between two calls of another thread.
    monkeypatch.setattr(_core, "_BUSY", float("inf"))  # (slow and unhurried: a busy site stays sampled)
    sample_fast(every=16)
    module = kit.load(TRY_FORM)
    call(module, range(100))
    kit.rows_of(module)  # a fold
    call(module, range(7))  # one timed, six counted by the countdown alone
    site = _core._sites[(module.__name__, "leaf")]
    assert site.every == 16 and site.left == 10
    with _core._lock:
        if change == "turned-slow":
            _core._redecide(site, 10, 1000.0)  # a window of slow calls
            assert (site.every, site.left) == (-1, 0)
        else:
            _core._set_timing(1, 10, 10.0)
            assert (site.every, site.left) == (0, 0)
    call(module, range(5))
    row = kit.rows_of(module)["leaf"]
    # untimed: 83 of the 89 calls after the first 11 (the site's first call, then 10 to the
    # decision; then one of 16 timed), and the 6 counted by the countdown before the
    # change; the 5 after it are timed
    assert (row["count"], row["untimed"]) == (112, 89)


def test_counts_exact_under_threads_and_folds(kit) -> None:  # type: ignore[no-untyped-def]
    sample_fast(every=8)
    module = kit.load(TRY_FORM)
    per_thread, workers = 20_000, 6
    start = threading.Barrier(workers + 1)

    def work() -> None:
        start.wait()
        call(module, range(per_thread))

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    start.wait()
    switches = 0
    while any(thread.is_alive() for thread in threads):
        _core.set_current_test(f"t{switches}")
        switches += 1
    for thread in threads:
        thread.join()
    _core.set_current_test(None)
    rows = kit.rows_of(module, per_test=True)
    assert sum(row["count"] for row in rows.values()) == per_thread * workers
    assert any(row.get("estimated") for row in rows.values())


def test_merge_and_report_carry_the_estimate(kit) -> None:  # type: ignore[no-untyped-def]
    sample_fast()
    module = kit.load(TRY_FORM)
    call(module, range(300))
    row = kit.rows_of(module)["leaf"]
    merged = _core.merge_snapshots([[row], [dict(row)]])
    (both,) = merged
    assert both["count"] == 600 and both["untimed"] == 2 * row["untimed"] and both["estimated"]
    assert both["total_error_ns"] == 2 * row["total_error_ns"]
    exact = dict(row)
    for key in ("estimated", "untimed", "total_error_ns"):
        exact.pop(key)
    assert "estimated" not in _core.merge_snapshots([[exact]])[0]
    table = _core.format_report([row])
    assert "~" in table.splitlines()[1] and "estimated" in table


def test_reset_and_configure_return_to_exact(kit) -> None:  # type: ignore[no-untyped-def]
    sample_fast()
    module = kit.load(TRY_FORM)
    call(module, range(200))
    site = _core._sites[(module.__name__, "leaf")]
    assert site.every == 4
    _core.configure(timing_every=1)
    assert site.every == 0 and site.left == 0
    call(module, range(200))
    assert kit.rows_of(module)["leaf"]["count"] == 400
    _core.reset()
    call(module, range(200))
    assert "estimated" not in kit.rows_of(module)["leaf"]


@pytest.mark.parametrize("bad", [{"timing_every": 0}, {"timing_after": -1}, {"timing_below": -1.0}])
def test_configure_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        _core.configure(**bad)


def test_environment(kit) -> None:  # type: ignore[no-untyped-def]
    result = kit.run_python(
        """
        import json
        from pytest_telemetry_inject import runtime
        settings = runtime.configure()
        print(json.dumps([settings["timing_every"], settings["timing_after"], settings["timing_below"]]))
        """,
        env={"TELEMETRY_INJECT_TIMING_EVERY": "1", "TELEMETRY_INJECT_TIMING_AFTER": "50",
             "TELEMETRY_INJECT_TIMING_BELOW": "0.5"})
    assert kit.last_json(result) == [1, 50, 0.5]
    bad = kit.run_python("from pytest_telemetry_inject import runtime; print(runtime.configure()['timing_every'])",
                         env={"TELEMETRY_INJECT_TIMING_EVERY": "0"})
    assert bad.stdout.strip() == "16" and "TELEMETRY_INJECT_TIMING_EVERY" in bad.stderr


def test_reports_show_which_totals_are_estimated(kit) -> None:  # type: ignore[no-untyped-def]
    from pytest_telemetry_inject.runtime import report

    sample_fast()
    module = kit.load(TRY_FORM)
    module_exact = kit.load(TRY_FORM)
    _core.set_current_test("t::one")
    call(module, range(300))
    call(module_exact, range(5))
    _core.set_current_test(None)
    data = report.build_report(_core.snapshot(), tests=_core.snapshot(per_test=True))
    by_module = {f["module"]: f for f in data["functions"]}
    sampled, exact = by_module[module.__name__], by_module[module_exact.__name__]
    assert sampled["estimated"] and sampled["untimed"] > 0 and sampled["total_error_ns"] >= 0
    assert "estimated" not in exact and "untimed" not in exact
    (test,) = [t for t in data["tests"] if t["test"] == "t::one"]
    assert any(f.get("estimated") for f in test["functions"] if f["module"] == module.__name__)
    page = report.render_html(data)
    assert "estimated from a sample" in page
    assert "~" in report.format_terminal(data)


def test_a_call_begun_as_a_span_that_fails_after_the_mode_changed_is_ended_with_its_error(kit) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    # A call starts while events are kept (its state is a span), and the mode changes to the
    # aggregator before it raises: the aggregator's fail() and end() meet a span. fail()
    # once wrapped it in a tuple that end() then dropped: the call, and its error, were lost.
    module = kit.load(TRY_FORM)
    tracer = module._telemetry
    _core.configure(keep_events=True)
    state = tracer.start()
    _core.configure(keep_events=False)
    try:
        raise module.Boom(-1)
    except module.Boom:
        state = tracer.fail("leaf", state)
    tracer.end("leaf", state)
    row = kit.rows_of(module)["leaf"]
    assert row["count"] == 1
    assert row["errors"] == 1 and row["exceptions"] == {"Boom": 1}


def test_a_site_that_stays_cheap_is_timed_less_often(kit, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Once _GROW_AFTER of its calls were timed while sampled, each window that stays cheap
    # makes the period 4 times longer, up to _GROW_MAX times timing_every. Every call is
    # still counted; the bound speaks for the fewer timed calls.
    monkeypatch.setattr(_core, "_GROW_AFTER", 20)
    monkeypatch.setattr(_core, "_BUSY", float("inf"))  # (slow and unhurried, below: a busy site stays sampled)
    sample_fast(every=4, after=10)
    module = kit.load(TRY_FORM)
    module.leaf(0)
    site = _core._sites[(module.__name__, "leaf")]
    periods = []
    for _ in range(30):
        call(module, range(200))
        kit.rows_of(module)  # a fold: the window is complete at each one here
        periods.append(site.every)
    # the first fold: sampled at 4 since the 10th call, 47 timed since (>= 20): 16; then 64,
    # which is 4 x _GROW_MAX and stays
    assert periods == [16] + [64] * 29
    row = kit.rows_of(module)["leaf"]
    assert row["count"] == 6_001 and row["estimated"] is True
    timed = row["count"] - row["untimed"]
    assert timed < 6_001 // 16  # one in 4 throughout would have timed 1,500
    assert row["total_error_ns"] > 0
    assert row["min_ns"] <= row["total_ns"] / row["count"] <= row["max_ns"]
    with _core._lock:
        _core._redecide(site, 100, 1e6)  # a window of slow calls: every call timed again
        assert (site.every, site.left) == (-1, 0)
        _core._redecide(site, 1024, 0.0)  # cheap again: sampled from timing_every, not 64
        assert site.every == 4
    call(module, range(100))
    assert kit.rows_of(module)["leaf"]["count"] == 6_101


@pytest.mark.parametrize("busy", [True, False])
def test_a_slow_site_called_fast_is_sampled(kit, monkeypatch, busy: bool) -> None:  # type: ignore[no-untyped-def]
    # A recursive parser's functions have long means (their callees' time is theirs too) and
    # as many calls: timed on every call after the first decision, sampled at the next
    # window whose calls came faster than _BUSY a second; one called slower stays exact.
    monkeypatch.setattr(_core, "_BUSY", 1_000 if busy else 10**12)
    _core.configure(timing_every=4, timing_after=10, timing_below=1e-12)  # every site slow
    module = kit.load(TRY_FORM)
    module.leaf(0)
    site = _core._sites[(module.__name__, "leaf")]
    for _ in range(8):
        call(module, range(100))
        kit.rows_of(module)  # a fold: a window of 40 calls completes at each
    row = kit.rows_of(module)["leaf"]
    assert row["count"] == 801
    if busy:
        assert site.every == 4 and row["estimated"] is True and row["untimed"] > 0
    else:
        assert site.every == -1 and "estimated" not in row


def test_a_window_a_look_does_not_act_on_is_left_to_the_next_fold(kit, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The hot path's looks only ever time fewer calls (a longer period, or sampled after
    # being timed on every call). A window that turned slow is left as it is, so that the
    # next fold (a test switch) times every call again on it; a look that started a new
    # window each time would leave the fold too few calls to decide on.
    monkeypatch.setattr(_core, "_BUSY", float("inf"))  # (slow and unhurried: a busy site stays sampled)
    monkeypatch.setattr(_core, "_GROW_AFTER", 20)
    sample_fast(every=4, after=10)
    module = kit.load(TRY_FORM)
    call(module, range(30))
    site = _core._sites[(module.__name__, "leaf")]
    assert site.every == 4 and site.sm < 20
    monkeypatch.setattr(_core, "_BELOW", 1e-12)  # every window slow from here on
    call(module, range(2_000))  # looks from the 20th call timed while sampled: none acts
    assert site.every == 4
    kit.rows_of(module)  # a fold
    assert (site.every, site.left) == (-1, 0)
