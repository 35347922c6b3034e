"""bench/precommit_speed.py keeps working (a small repository; its timings are not judged
here: this machine's load is not the hook's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "precommit_speed.py"


def test_the_speed_bench_runs_and_reports_every_figure(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--files", "60", "--runs", "1", "--keep", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    out = done.stdout
    for label in ("warm (memo hit)", "fresh edit", "cold (no cache)", "python -c pass"):
        assert label in out, out
    assert "target <= 0.5 s: PASS" in out or "target <= 0.5 s: FAIL" in out
    assert "litellm imported: no" in out
