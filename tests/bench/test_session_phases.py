"""bench/session_phases.py cuts callgrind's count where its probe calls ``os.getppid()``: the
probe must call it exactly once at each of the six phase edges, in a plain and in an
instrumented session (a seventh part is the exit). Run here without valgrind: the calls
are counted."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "session_phases.py"

COUNTING = """
import os, sys
edges = []
_getppid = os.getppid
def getppid():
    edges.append(sys._getframe(1).f_code.co_name)
    return _getppid()
os.getppid = getppid
import pytest
code = pytest.main(sys.argv[1:])
print("EDGES", " ".join(edges))
sys.exit(code)
"""


@pytest.mark.parametrize("extra", [[], ["--inject-telemetry"]], ids=["plain", "warm"])
def test_the_probe_marks_each_phase_edge_once(tmp_path: Path, extra: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("session_phases", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "core.py").write_text("def double(x):\n    return x * 2\n")
    (project / "test_core.py").write_text("from pkg.core import double\n\n\ndef test_double():\n"
                                          "    assert double(2) == 4\n")
    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / f"{bench.PROBE_NAME}.py").write_text(bench.PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(probes), str(project)])}
    for _ in range(2 if extra else 1):  # (warm: the second session)
        done = subprocess.run([sys.executable, "-c", COUNTING, "-q", "-p", "no:cacheprovider", "-p", bench.PROBE_NAME,
                               *extra], cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    edges = next(line for line in done.stdout.splitlines() if line.startswith("EDGES")).split()[1:]
    assert edges == ["<module>", "pytest_load_initial_conftests", "pytest_sessionstart", "pytest_collection_finish",
                     "pytest_runtestloop", "pytest_unconfigure"], done.stdout
    assert len(edges) + 1 == len(bench.PHASES)
