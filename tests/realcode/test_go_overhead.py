"""The cost of Go telemetry per call (``bench/go_overhead.py``): instrumented, disabled and
bare copies of the same code, google/btree's own insert benchmark among them, measured side
by side with the real Go toolchain. The targets: at most 300 ns per instrumented call, at
most 20 ns per call with TELEMETRY_INJECT_DISABLED=1."""

from __future__ import annotations

from pathlib import Path

from pytest_telemetry_inject.testkit import import_path

HERE = Path(__file__).resolve().parent
bench = import_path(HERE.parents[1] / "bench" / "go_overhead.py", "telemetry_inject_go_overhead")
toolchains = import_path(HERE / "toolchains.py", "telemetry_inject_realcode_toolchains")


def best_of(attempts: list[list[dict]]) -> list[dict]:
    """Per case, the best figures of several measurements (waiting for a CPU only ever adds
    time: the least is the nearest to the cost)."""
    rows = []
    for same in zip(*attempts):
        row = dict(same[0])
        for key in ("bare_ns", "on_ns", "off_ns"):
            row[key] = min(r[key] for r in same)
        row["on_per_call_ns"] = (row["on_ns"] - row["bare_ns"]) / row["calls_per_op"]
        row["off_per_call_ns"] = (row["off_ns"] - row["bare_ns"]) / row["calls_per_op"]
        row["ok"] = row["on_per_call_ns"] <= bench.TARGET_ON_NS and row["off_per_call_ns"] <= bench.TARGET_OFF_NS
        rows.append(row)
    return rows


def test_go_call_overhead_meets_its_targets(tmp_path: Path) -> None:
    import os

    import pytest

    toolchains.require("go")
    counts = bench.instrument(bench.build(tmp_path), tmp_path)
    assert counts["inst"] == 2
    attempts = [bench.measure(tmp_path, count=3)]
    while not all(row["ok"] for row in best_of(attempts)) and len(attempts) < 3:
        attempts.append(bench.measure(tmp_path, count=3))  # a busy machine: measure again
    rows = best_of(attempts)
    table = bench.format_table(rows)
    print(table)
    load = os.getloadavg()[0]
    if not all(row["ok"] for row in rows) and load > 2 * (os.cpu_count() or 1):
        pytest.skip(f"the machine is too busy to time calls (load average {load:.1f} on {os.cpu_count()} CPUs):\n"
                    + table)
    assert {row["case"].split(" ")[0] for row in rows} >= {"hot.Mix", "hot.Find"}
    if bench.BTREE.is_dir():
        btree = next(row for row in rows if "btree" in row["case"])
        assert btree["calls_per_op"] > 1  # the benchmark reaches instrumented code
    for row in rows:
        assert row["on_ns"] > row["bare_ns"], table  # the instrumented copy does measure calls
        assert row["on_per_call_ns"] <= bench.TARGET_ON_NS, table
        assert row["off_per_call_ns"] <= bench.TARGET_OFF_NS, table
