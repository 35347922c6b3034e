"""Comparisons: exact call counts, new and vanished functions, exceptions, the timing rule,
and the --telemetry-fail-on rules."""

from __future__ import annotations

import math
import random

import pytest

from pytest_telemetry_inject.gate.baseline import Baseline
from pytest_telemetry_inject.gate.compare import RuleError, compare, parse_rules


def run(calls: dict[str, dict[str, tuple]], *, processes: int = 1, outcomes: dict | None = None,
        outside: dict | None = None) -> Baseline:
    """calls: test -> {function: (count, total_ns[, errors, {exception: n}])}."""
    rows = []
    for test, functions in [*calls.items(), *([(None, outside)] if outside else [])]:
        for name, figures in functions.items():
            count, total = figures[0], figures[1]
            errors = figures[2] if len(figures) > 2 else 0
            rows.append({"module": "m", "name": name, "test": test, "count": count, "total_ns": total,
                         "min_ns": total // max(count, 1), "max_ns": total // max(count, 1), "errors": errors,
                         "exceptions": figures[3] if len(figures) > 3 else {}})
    return Baseline.from_rows(rows, outcomes={t: (outcomes or {}).get(t, "passed") for t in calls}, test_fixtures={},
                              fixture_setups={}, instrumented=[], modules={}, meta={"processes": processes})


def test_identical_runs_have_no_finding() -> None:
    data = {"t1": {"f": (10, 1000), "g": (1, 50)}, "t2": {"f": (3, 300)}}
    result = compare(run(data), run(data))
    assert result.findings == [] and result.compared_tests == ["t1", "t2"]


def test_call_counts_are_exact_per_test_and_function() -> None:
    before = run({"t1": {"f": (1000, 10_000), "g": (2, 10)}, "t2": {"f": (5, 50)}})
    after = run({"t1": {"f": (10_000, 100_000), "g": (2, 10)}, "t2": {"f": (5, 50), "g": (1, 5)}})
    result = compare(before, after)
    calls = [(f.function, f.test, f.before, f.after) for f in result.findings if f.kind == "calls"]
    assert calls == [("m:f", "t1", 1000, 10_000), ("m:g", "t2", 0, 1)]
    assert math.isinf(result.findings[1].change) and "newly called here" in result.findings[1].note
    assert result.findings[0].change == pytest.approx(9.0)


def test_calls_that_only_moved_between_tests_are_no_finding() -> None:
    # A cache filled by whichever test ran first: the total is the same.
    before = run({"t1": {"f": (10, 100)}, "t2": {"f": (1, 10)}})
    after = run({"t1": {"f": (1, 10)}, "t2": {"f": (10, 100)}})
    result = compare(before, after)
    assert [f.moved for f in result.findings] == [True, True]
    assert result.real_findings == [] and result.counts() == {"moved": 2}
    assert result.gate(parse_rules("calls:+0")) == []


def test_new_and_vanished_functions_and_exceptions() -> None:
    before = run({"t1": {"old": (3, 30), "f": (2, 20, 0)}})
    after = run({"t1": {"new": (4, 40), "f": (2, 20, 1, {"KeyError": 1})}})
    result = compare(before, after)
    kinds = {(f.kind, f.function) for f in result.findings}
    assert kinds == {("new-function", "m:new"), ("vanished-function", "m:old"), ("exceptions", "m:f")}
    exceptions = next(f for f in result.findings if f.kind == "exceptions")
    assert "KeyError 0 -> 1" in exceptions.note
    violations = result.gate(parse_rules("new,vanished,exceptions"))
    assert {rule.kind for rule, _f in violations} == {"new", "vanished", "exceptions"}


def test_only_tests_that_passed_in_both_are_compared() -> None:
    before = run({"t1": {"f": (1, 10)}, "t2": {"f": (1, 10)}, "gone": {"f": (1, 10)}})
    after = run({"t1": {"f": (2, 10)}, "t2": {"f": (9, 10)}, "fresh": {"f": (1, 10)}}, outcomes={"t2": "failed"})
    result = compare(before, after)
    assert [f.test for f in result.findings] == ["t1"]
    assert result.not_compared == ["t2"] and result.new_tests == ["fresh"] and result.not_run == ["gone"]


def test_calls_outside_tests_are_compared_per_process() -> None:
    before = run({"t1": {"f": (1, 10)}}, processes=2, outside={"setup": (2, 20)})
    same = run({"t1": {"f": (1, 10)}}, processes=4, outside={"setup": (4, 40)})
    assert compare(before, same).findings == []
    more = run({"t1": {"f": (1, 10)}}, processes=4, outside={"setup": (8, 80)})
    finding = compare(before, more).findings[0]
    assert (finding.test, finding.before, finding.after, finding.note) == ("(outside tests)", 1, 2, "per process")


@pytest.mark.parametrize("text, hits", [
    ("calls:+10%", [False, True, False, False]),
    ("calls:-10%", [False, False, True, False]),
    ("calls:10%", [False, True, True, False]),
    ("calls:+0", [True, True, False, False]),
    ("calls:+5", [False, True, False, False]),
])
def test_call_rules(text: str, hits: list[bool]) -> None:
    # f: 100 -> 105 (+5%), g: 100 -> 200 (+100%), h: 100 -> 50, k: unchanged
    before = run({"t": {"f": (100, 1), "g": (100, 1), "h": (100, 1), "k": (100, 1)}})
    after = run({"t": {"f": (105, 1), "g": (200, 1), "h": (50, 1), "k": (100, 1)}})
    result = compare(before, after)
    flagged = {finding.function for _rule, finding in result.gate(parse_rules(text))}
    assert [f"m:{name}" in flagged for name in "fghk"] == hits


@pytest.mark.parametrize("text", ["calls", "calls:+", "time:-5%", "time:+5", "time:+0%", "speed:+5%", "calls:+5%%",
                                  "new:1"])
def test_bad_rules_are_refused_in_one_line(text: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules(text)
    assert repr(text) in str(caught.value) and "\n" not in str(caught.value)


def test_rules_from_ini_lines() -> None:
    rules = parse_rules(["calls:+10%", "time:+50%, new"])
    assert [(r.kind, r.amount) for r in rules] == [("calls", 10.0), ("time", 50.0), ("new", 0.0)]


def noisy_runs(rng: random.Random, slow: dict[str, float], *, functions: int = 40, tests: int = 30,
               machine: float = 1.0) -> Baseline:
    """A run whose per-call times carry lognormal noise (sigma 20%), a machine factor, and the
    given functions slower by their factor."""
    calls = {}
    for t in range(tests):
        row = {}
        for f in range(functions):
            if (t + f) % 3 == 0:
                continue
            typical = 200_000 if f == 7 else 1000 * (1 + f)  # f7 is long: its change passes 1 ms over the run
            per_call = typical * machine * slow.get(f"f{f}", 1.0) * math.exp(rng.gauss(0, 0.2))
            row[f"f{f}"] = (10, int(per_call * 10))
        calls[f"t{t}"] = row
    return run(calls)


def test_timing_noise_is_no_finding_and_a_machine_drift_is_removed() -> None:
    rng = random.Random(1)
    base = noisy_runs(rng, {})
    for machine in (1.0, 1.6, 0.7):
        result = compare(base, noisy_runs(rng, {}, machine=machine))
        assert result.timing.judged
        assert [f for f in result.findings if f.kind == "time"] == []
        assert math.exp(result.timing.bins[0][1]) == pytest.approx(machine, rel=0.15)


def test_a_slowdown_beyond_the_noise_is_found_and_gated() -> None:
    rng = random.Random(2)
    base = noisy_runs(rng, {})
    result = compare(base, noisy_runs(rng, {"f7": 2.0}, machine=1.3))
    timed = [f for f in result.findings if f.kind == "time"]
    assert [f.function for f in timed] == ["m:f7"]
    assert timed[0].after == pytest.approx(2.0, rel=0.2)
    assert result.gate(parse_rules("time:+50%")) and not result.gate(parse_rules("time:+150%"))


def test_a_slowdown_within_the_noise_or_with_few_pairs_is_not_judged() -> None:
    rng = random.Random(3)
    base = noisy_runs(rng, {})
    result = compare(base, noisy_runs(rng, {"f7": 1.1}))  # 10%: under the ratio a finding needs
    assert [f for f in result.findings if f.kind == "time"] == []
    few = run({"t": {"f": (1, 1000)}})
    slower = run({"t": {"f": (1, 5_000_000)}})
    result = compare(few, slower)
    assert not result.timing.judged and "timing not judged" in result.timing.describe()
