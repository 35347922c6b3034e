"""Frozen time in the tests (freezegun, which many pytest suites use): the runtime keeps the
real clock, so a call's duration is real time, not frozen time less real time."""

from __future__ import annotations

import time

import pytest

from pytest_telemetry_inject.runtime import _core

from .test_timing_sample import TRY_FORM

freezegun = pytest.importorskip("freezegun")


def test_calls_under_frozen_time_keep_real_durations(kit) -> None:  # type: ignore[no-untyped-def]
    _core.configure(timing_every=1)
    module = kit.load(TRY_FORM)
    with freezegun.freeze_time("2001-02-03"):
        assert _core._seconds is not time.perf_counter  # (time's own clock is the fake now)
        for i in range(200):
            module.leaf(i)
    row = kit.rows_of(module)["leaf"]
    assert row["count"] == 200
    # Frozen time less real time was ~10**18 ns or below zero; a real call is microseconds.
    assert 0 <= row["min_ns"] <= row["max_ns"] < 10**9
    assert 0 < row["total_ns"] < 10**9
