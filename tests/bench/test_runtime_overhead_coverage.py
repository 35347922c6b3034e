"""bench/runtime_overhead.py --coverage: the on-the-fly rows and a test's switches are timed
with coverage.py's tracer on (its own cost shows in the bare call) and without it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_coverage_rows_are_timed_with_and_without_the_tracer(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "runtime_overhead.py"), "--coverage", "--rounds", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["coverage"]
    assert set(rows) == {"without", "with"}
    for kind in rows.values():
        assert list(kind) == ["bare call", "on the fly, every call timed", "on the fly, sampled (1 of 16)",
                              "a test's two switches"]
        assert all(value > 0 for value in kind.values()), kind
    # The tracer was on: a bare call pays coverage.py's line and call events (several times
    # its cost without), and so does the runtime's own code.
    assert rows["with"]["bare call"] > 3 * rows["without"]["bare call"], rows
    assert rows["with"]["a test's two switches"] > rows["without"]["a test's two switches"], rows
    assert "under coverage.py's tracer" in done.stdout
