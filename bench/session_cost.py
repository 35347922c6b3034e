"""What a warm ``pytest --inject-telemetry`` session costs before any test runs: the fixed
part of every session (the plugin's imports, finding the files, the file memos, the import
hook, the summary, the interpreter's exit), which decides the ratio of a short suite.

    python bench/session_cost.py [--modules 12] [--functions 15] [--rounds 15] [--instructions]

It writes a small project (``--modules`` modules of ``--functions`` functions each, one test
module per module) in a temporary git repository, fills the cache with one instrumented
run, and then times, interleaved, ``pytest -k nothingmatches`` plain and with
``--inject-telemetry``: every module is imported and instrumented from the cache, no test
runs. Printed: the fastest of ``--rounds`` runs of each and their difference (the session's
fixed cost, wall clock), and, from one more process, the time each step took inside it
(the plugin's imports, the start, the hook's modules, the summary) and the number of the
package's modules imported. ``--instructions`` also counts the two sessions' instructions
under valgrind's callgrind (the figure a busy machine does not move).

Python's bytecode cache is written and read, as on a developer's machine (the first run
compiles; ``PYTHONDONTWRITEBYTECODE`` is taken out of the environment).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run inside the instrumented session: the time each step takes, printed as one line.
PROBE = r'''
import functools, sys, time
started = time.perf_counter()
import pytest
import pytest_telemetry_inject.plugin as plugin
spent = {}
def timed(owner, name, label):
    original = getattr(owner, name)
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        begun = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - begun
    setattr(owner, name, wrapper)
begun = time.perf_counter()
from pytest_telemetry_inject.plugin import session, importhook
spent["import"] = time.perf_counter() - begun
timed(session.TelemetrySession, "start", "start")
timed(importhook.TelemetryLoader, "get_code", "hook")
timed(session.TelemetrySession, "pytest_terminal_summary", "summary")
code = pytest.main(sys.argv[1:])
modules = sum(1 for name in sys.modules if name.startswith("pytest_telemetry_inject"))
print("PROBE " + " ".join(f"{k}={v * 1000:.1f}" for k, v in spent.items()) + f" modules={modules}", file=sys.stderr)
sys.exit(code)
'''


def module_source(index: int, functions: int) -> str:
    parts = [f'"""Module {index}."""\n']
    for f in range(functions):
        parts.append(f"\n\ndef f{f}(x, y=2):\n    total = 0\n    for i in range(x):\n"
                     f"        total += i * y + {f}\n    return total\n")
    return "".join(parts)


def make_project(root: Path, modules: int, functions: int) -> None:
    package = root / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    tests = root / "tests"
    tests.mkdir()
    for m in range(modules):
        (package / f"mod{m}.py").write_text(module_source(m, functions))
        (tests / f"test_mod{m}.py").write_text(f"from pkg import mod{m}\n\n\ndef test_f0():\n"
                                              f"    assert mod{m}.f0(3) == 6\n")
    (root / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    (root / ".gitignore").write_text(".telemetry_cache/\n__pycache__/\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)


def pytest_args(*extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "nothingmatches", *extra]


def run(args: list[str], root: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 5):  # 5: no test ran, as asked
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def instructions(args: list[str], root: Path, env: dict[str, str]) -> int | None:
    if shutil.which("valgrind") is None:
        return None
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *args], cwd=root,
                          env=env, capture_output=True, text=True)
    found = re.findall(r"Collected : (\d+)", done.stderr)
    return int(found[-1]) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", type=int, default=12)
    parser.add_argument("--functions", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--instructions", action="store_true", help="also count instructions under callgrind")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "TELEMETRY_INJECT_", "GIT_")) and k != "PYTHONDONTWRITEBYTECODE"}
    # So that valgrind's slowness does not change which functions are sampled.
    env["TELEMETRY_INJECT_TIMING_BELOW"] = "1"
    root = Path(tempfile.mkdtemp(prefix="session-cost-"))
    try:
        make_project(root, args.modules, args.functions)
        plain, warm = pytest_args(), pytest_args("--inject-telemetry")
        run(plain, root, env)  # writes the bytecode cache
        run(warm, root, env)  # fills the telemetry cache
        times: dict[str, list[float]] = {"plain": [], "warm": []}
        for _ in range(args.rounds):
            times["plain"].append(run(plain, root, env))
            times["warm"].append(run(warm, root, env))
        best = {k: min(v) for k, v in times.items()}
        print(f"{args.modules} modules of {args.functions} functions, -k nothingmatches, fastest of {args.rounds}:")
        print(f"  plain {best['plain'] * 1000:.1f} ms, warm {best['warm'] * 1000:.1f} ms: "
              f"the session's fixed cost {(best['warm'] - best['plain']) * 1000:.1f} ms")
        probe = subprocess.run([sys.executable, "-c", PROBE, *pytest_args("--inject-telemetry")[3:]], cwd=root,
                               env=env, capture_output=True, text=True)
        line = next((x for x in probe.stderr.splitlines() if x.startswith("PROBE ")), "PROBE (no figures)")
        print(f"  inside one warm session (ms): {line[6:]}")
        if args.instructions:
            counts = {k: instructions(a, root, env) for k, a in (("plain", plain), ("warm", warm))}
            if None in counts.values():
                print("  instructions: valgrind is not installed")
            else:
                print(f"  instructions: plain {counts['plain']:,}, warm {counts['warm']:,}: "
                      f"{counts['warm'] - counts['plain']:,} more")  # type: ignore[operator]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
