"""``record.Record``: the records a warm session makes keep a dataclass's behaviour."""

from __future__ import annotations

import pickle

import pytest

from pytest_telemetry_inject.engine.cache import CacheCounters
from pytest_telemetry_inject.engine.pipeline import FileResult, FunctionOutcome
from pytest_telemetry_inject.engine.tasks import FileReport, RunOptions
from pytest_telemetry_inject.formats import IndexEntry


def report(**changes: object) -> FileReport:
    fields = {"path": "a.py", "language": "python", "status": "instrumented", "reason": "",
              "functions": [FunctionOutcome("f", 1, "instrumented")], "memo_hit": True,
              "counters": CacheCounters(memo_hits=1), "tally": ({"instrumented": 1}, {}), "tests": "t.py"}
    return FileReport(**{**fields, **changes})  # type: ignore[arg-type]


def test_equal_by_every_field_and_of_the_same_class_only() -> None:
    assert report() == report()
    for name, other in (("path", "b.py"), ("functions", [FunctionOutcome("f", 2, "instrumented")]),
                        ("counters", CacheCounters(memo_hits=2)), ("tests", ""), ("written", "x")):
        assert report() != report(**{name: other}), name
    assert FunctionOutcome("f", 1, "instrumented") != ("f", 1, "instrumented", "", "", "", False)
    assert IndexEntry("k", "ok") == IndexEntry("k", "ok") != IndexEntry("k", "failed")


def test_repr_names_each_field_in_order() -> None:
    assert repr(CacheCounters(corrupt=3)) == ("CacheCounters(memo_hits=0, memo_misses=0, script_hits=0, "
                                              "script_misses=0, corrupt=3, write_errors=0)")
    assert repr(RunOptions(dry_run=True)).startswith("RunOptions(mode='instrument', output_dir=None, in_place=False, "
                                                     "dry_run=True,")


def test_defaults_are_not_shared_and_records_are_slotted_and_unhashable() -> None:
    one, two = FileResult("a.py"), FileResult("b.py")
    assert one.functions == [] and one.functions is not two.functions and one.counters is not two.counters
    with pytest.raises(AttributeError):
        one.surprise = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        hash(one)


def test_a_report_crosses_a_process_boundary_whole() -> None:
    # The runner's worker processes send their reports home pickled.
    assert pickle.loads(pickle.dumps(report())) == report()
    counters = CacheCounters(memo_hits=1, corrupt=2)
    counters.add(CacheCounters(memo_hits=3, write_errors=1))
    assert (counters.memo_hits, counters.corrupt, counters.write_errors) == (4, 2, 1)
