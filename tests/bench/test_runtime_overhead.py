"""The runtime benchmark (bench/runtime_overhead.py) still runs: its smoke run prints every
row with a verdict, and the child process of --instructions calls the variant it is named
(correctness only: no figure here is judged, the benchmark's own run does that)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "runtime_overhead.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300)


def test_quick_run_prints_every_row_with_its_verdict(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = run("--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    for label in ("runtime: default aggregator", "runtime: disabled", "runtime: OpenTelemetry sink"):
        assert rows[label]["result"].split()[0] in ("PASS", "FAIL"), rows[label]
    assert rows["runtime: OpenTelemetry sink"]["ns_above_bare_min"] > rows["runtime: default aggregator"]["ns_above_bare_min"] > 0
    assert "x by hand (is " in rows["runtime: OpenTelemetry sink"]["target"]
    assert "minimum over minimum" in rows["runtime: OpenTelemetry sink"]["result"]


def test_the_instruction_counts_child_calls_its_variant() -> None:
    assert run("--run-calls", "runtime: default aggregator", "50").returncode == 0
    unknown = run("--run-calls", "no such row", "50")
    assert unknown.returncode != 0 and "ValueError" in unknown.stderr
