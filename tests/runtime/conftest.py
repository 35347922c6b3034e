"""Helpers for the runtime tests: modules written with the engine's calling convention,
a clean runtime per test, subprocess runners."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pytest_telemetry_inject.runtime import _core

ROOT = Path(__file__).resolve().parents[2]
HEADER = ("from pytest_telemetry_inject import runtime as _telemetry_runtime\n"
          "_telemetry = _telemetry_runtime.tracer(__name__)\n")
_counter = itertools.count()


@pytest.fixture(autouse=True)
def clean_runtime():
    """Every test starts from default settings and no calls, and leaves them so (the
    runtime is process-wide state shared with the other tests of an xdist worker)."""
    before = _core.configure()
    _core.set_current_test(None)  # (this makes the runtime the collector: undone below)
    # raise_faults: a fault of the runtime's own fails the test that meets it (in a program
    # it is counted and swallowed: internal_faults()); a test that makes faults on purpose
    # turns it off.
    _core.configure(disabled=False, min_duration=0.0, sample_rate=1.0, jsonl="", trace="", otel=False,
                    otel_provider=None, report="", keep_events=False, max_events=200_000, collector=False,
                    raise_faults=True)
    _core.reset()
    yield
    _core.set_current_test(None)
    before.pop("collector", None)
    _core.configure(**before, collector=False)
    _core.reset()


def load(tmp_path: Path, source: str, *, header: str = HEADER, name: str | None = None) -> Any:
    """Import ``source`` (dedented, after ``header``) as a fresh module from a real file."""
    name = name or f"ti_rt_mod_{next(_counter)}"
    path = tmp_path / f"{name}.py"
    path.write_text(header + textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def rows_of(module: Any, *, per_test: bool = False) -> dict:
    """This module's snapshot rows by function name (by (test, name) when per_test)."""
    out = {}
    for row in _core.snapshot(per_test=per_test):
        if row["module"] == module.__name__:
            out[(row["test"], row["name"]) if per_test else row["name"]] = row
    return out


def run_python(code: str, *, env: dict | None = None, cwd: Path | None = None, isolated: bool = False,
               timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the project importable); check it succeeded."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_INJECT_")}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env["TELEMETRY_INJECT_RAISE_FAULTS"] = "1"  # (see clean_runtime)
    full_env.update(env or {})
    command = [sys.executable, *(["-I", "-S"] if isolated else []), "-c", textwrap.dedent(code)]
    result = subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def last_json(result: subprocess.CompletedProcess) -> Any:
    return json.loads(result.stdout.strip().splitlines()[-1])


class Kit:
    """The helpers above, as one fixture (test modules cannot import conftest under
    ``--import-mode=importlib``)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.root = ROOT
        self.header = HEADER

    def load(self, source: str, **kwargs: Any) -> Any:
        return load(self.tmp_path, source, **kwargs)

    rows_of = staticmethod(rows_of)
    run_python = staticmethod(run_python)
    last_json = staticmethod(last_json)


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return Kit(tmp_path)
