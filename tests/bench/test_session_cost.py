"""bench/session_cost.py on a tiny project: it runs, and its probe sees a warm session that
instrumented the project's modules from the cache (a renamed hook or step would leave a
figure out)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "session_cost.py"


def test_session_cost_prints_each_step_of_a_warm_session(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("session_cost", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--modules", "2", "--functions", "2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"the session's fixed cost -?\d+\.\d ms", out), out
    probe = re.search(r"inside one warm session \(ms\): (.*)", out)
    assert probe is not None, out
    figures = dict(part.split("=") for part in probe.group(1).split())
    assert set(figures) == {"import", "start", "hook", "summary", "modules"}, figures
    assert float(figures["hook"]) > 0 and 20 <= int(figures["modules"]) < 60
