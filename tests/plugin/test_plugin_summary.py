"""The terminal summary's table (top, sort, shortened names) and self time in the summary and
the reports, through real pytest runs (and real xdist workers)."""

from __future__ import annotations

import json

import pytest

from .test_plugin_config import _one_line_usage_error

MODULE = '''
import time


def worker():
    time.sleep(0.003)


def boss():
    time.sleep(0.001)
    for _ in range(3):
        worker()


def a_function_with_a_name_long_enough_to_need_shortening_in_the_table():
    return 1
'''
TESTS = '''
from pkg.core import boss, a_function_with_a_name_long_enough_to_need_shortening_in_the_table as long


def test_boss():
    for _ in range(30):
        boss()


def test_long():
    for _ in range(50):
        long()
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    (pytester.path / "pkg").mkdir()
    (pytester.path / "pkg" / "__init__.py").write_text("")
    (pytester.path / "pkg" / "core.py").write_text(MODULE)
    pytester.makepyfile(test_core=TESTS)
    return pytester


def _table(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("function "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(("pkg.", "…"))), len(lines))
    return lines[start:end]


def _ms(row: str, column: int) -> float:
    return float(row.split()[column])


def test_the_summary_shows_sampled_self_time_beside_total(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-p", "no:randomly",
                                          "--telemetry-self-time", "1")
    assert result.ret == 0, result.stdout.str()
    table = _table(result)
    assert table[0].split()[:6] == ["function", "calls", "total", "ms", "self", "ms"]
    rows = {line.split()[0]: line for line in table[1:]}
    boss, worker = rows["pkg.core:boss"], rows["pkg.core:worker"]
    assert boss.split()[1] == "30" and worker.split()[1] == "90"
    # total ms, self ms: boss's total holds worker's; its self time does not
    assert _ms(boss, 2) > _ms(worker, 2) > _ms(boss, 3)
    assert _ms(worker, 3) > 2 * _ms(boss, 3)
    result.stdout.fnmatch_lines(["self ms: the function's own time, its instrumented callees' taken off, sampled "
                                 "every 1 ms (* samples*"])


def test_top_sort_and_shortened_names(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "--telemetry-sort",
                                          "calls", "--telemetry-top", "2")
    table = _table(result)
    assert "(by calls)" in table[0]
    assert table[1].split()[0] == "pkg.core:worker" and table[1].split()[1] == "90"
    assert table[2].startswith("…") and table[2].split()[0].endswith("need_shortening_in_the_table")
    assert len(table[2].split()[0]) == 60
    result.stdout.fnmatch_lines(["(and 1 more functions: --telemetry-top N shows more)"])
    by_self = _table(project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider",
                                                  "--telemetry-sort", "self", "--telemetry-self-time", "1"))
    assert by_self[1].split()[0] == "pkg.core:worker"


@pytest.mark.parametrize("args", [[], ["--telemetry-self-time", "0"], ["-o", "telemetry_self_time=0"]],
                         ids=["default", "option", "ini"])
def test_self_time_is_off_unless_asked_for(project: pytest.Pytester, args: list[str]) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", *args)
    assert result.ret == 0
    assert "self" not in _table(result)[0] and "sampled every" not in result.stdout.str()


def test_a_suite_that_counts_the_gc_objects_passes(pytester: pytest.Pytester) -> None:
    # markupsafe's test_markup_leaks: len(gc.get_objects()) may take at most two values over a
    # loop. The self-time sampler gives the frames it walks Python frame objects (which the GC
    # tracks), so it is off by default; the instrumented calls themselves allocate nothing
    # that outlives them.
    (pytester.path / "pkg").mkdir()
    (pytester.path / "pkg" / "__init__.py").write_text("")
    (pytester.path / "pkg" / "core.py").write_text("def escape(s):\n    return s.replace('<', '&lt;')\n\n\n"
                                                 "def twice(s):\n    return escape(escape(s))\n")
    pytester.makepyfile(test_leak='''
import gc
from pkg.core import escape, twice


def test_no_leak():
    counts = set()
    gc.collect()
    for _ in range(20):
        for _ in range(1000):
            escape("foo")
            twice("<foo>")
        counts.add(len(gc.get_objects()))
    assert len(counts) < 3, counts
''')
    for _ in range(3):
        result = pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=2)  # the test and pkg/core.py::telemetry


@pytest.mark.parametrize(("args", "needles"), [
    (["-o", "telemetry_self_time=often"], ("telemetry_self_time must be milliseconds from 0 to 60000, not 'often'",
                                           "(-o telemetry_self_time)")),
    (["--telemetry-self-time", "-1"], ("not -1.0", "(--telemetry-self-time)")),
    (["--telemetry-sort", "self", "--telemetry-self-time", "0"], ("--telemetry-sort self needs self time",)),
])
def test_bad_self_time_settings_are_one_line(project: pytest.Pytester, args: list[str],
                                             needles: tuple[str, ...]) -> None:
    _one_line_usage_error(project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", *args),
                          *needles)


def test_xdist_workers_self_time_reaches_the_reports(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-n", "2",
                                          "--telemetry-self-time", "1",
                                          "--telemetry-report", "out/report.json", "--telemetry-trace", "out/trace.json",
                                          "--telemetry-max-events", "20")
    assert result.ret == 0, result.stdout.str()
    data = json.loads((project.path / "out" / "report.json").read_text())
    assert data["version"] == 2 and data["self_time"]["samples"] > 0
    functions = {f["name"]: f for f in data["functions"]}
    assert functions["worker"]["self_ns"] > functions["boss"]["self_ns"] > 0
    assert all(f["self_ns"] <= f["total_ns"] for f in functions.values())
    boss_test = next(t for t in data["tests"] if t["test"].endswith("test_boss"))
    assert boss_test["calls"] == 120 and boss_test["events_kept"] <= 20
    trace = json.loads((project.path / "out" / "trace.json").read_text())
    counted = {f["name"]: f for f in trace["otherData"]["functions"]}
    assert counted["pkg.core:worker"]["count"] == 90 and counted["pkg.core:worker"]["self_ns"] > 0
    assert trace["otherData"]["dropped_events"] == 170 - sum(1 for e in trace["traceEvents"] if e["ph"] == "X")


def test_a_sink_that_cannot_write_is_said_in_the_summary(project: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRY_INJECT_JSONL", str(project.path / "missing" / "events.jsonl"))
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-n", "2")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["events: 170 could not be written to the jsonl sink: FileNotFoundError: *"])


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["single", "xdist"])
def test_faults_of_the_runtime_are_shown_not_swallowed_silently(pytester: pytest.Pytester, workers) -> None:
    (pytester.path / "pkg").mkdir()
    (pytester.path / "pkg" / "__init__.py").write_text("")
    (pytester.path / "pkg" / "core.py").write_text("def one():\n    return 1\n\n\ndef two():\n    return 2\n")
    pytester.makepyfile(test_core='''
from pytest_telemetry_inject.runtime import _core
from pkg.core import one, two


def test_break_and_call():
    assert one() == 1  # the site exists now
    _core._sites[("pkg.core", "one")].total = None  # a broken record: counting it fails
    for _ in range(5):
        assert one() == 1  # the test goes on
    assert two() == 2
''')
    result = pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", *workers)
    result.assert_outcomes(passed=2)  # the test and pkg/core.py::telemetry
    lines = [line for line in result.stdout.lines if line.startswith("runtime: ")]
    assert lines and all(" internal fault(s) in " in line and "swallowed" in line and "first TypeError: " in line
                         for line in lines), result.stdout.str()
    assert sum(int(line.split()[1]) for line in lines) >= 5  # every broken call, from whichever worker
