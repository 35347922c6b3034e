"""Where a warm ``pytest --inject-telemetry`` session's cost goes, phase by phase, in
instructions: a real project's suite run plain and warm under valgrind's callgrind, each
process's count cut at the phases' edges.

    python bench/session_phases.py --project DIR [--disabled] [--python PY] [-- PYTEST_ARGS...]

A probe plugin (written to a temporary folder, loaded with ``-p``) calls ``os.getppid()`` at
each phase's edge, and callgrind (``--dump-before=getppid``) writes the count so far as one
part of its output; the parts are the phases:

1. the interpreter and pytest start, up to the probe's import;
2. the plugins and options, and (with ``--inject-telemetry``) the session's start: the
   package's imports, the file listing and the dry run over the cache's memos;
3. the conftests and ``pytest_configure``;
4. collection (with the import hook, the project's modules instrumented from the cache);
5. the tests (and the ``path::telemetry`` items);
6. the terminal summary, the session's finish and ``pytest_unconfigure`` (pytest's own full
   garbage collection among them);
7. the interpreter's exit.

The project is run once with ``--inject-telemetry`` first (not counted: the cache filled),
then plain and warm under callgrind (each ~50 times slower than without), and with
``--disabled`` warm again with ``TELEMETRY_INJECT_DISABLED=1`` (the instrumented code's
per-call runtime off: what is left is the session's own work). Instructions, not seconds:
a busy machine does not move them, so two versions of the package can be compared on one
project a change at a time. Child processes (a suite's own) are counted apart, in total.
Needs valgrind (Debian: ``apt-get install valgrind``).

Under callgrind every call takes ~50 times as long, and the runtime decides which functions
to sample by their measured durations (``timing_below``, 2 µs): left as it is, a function
sampled at full speed would be timed on every call here (markupsafe's suite: +1,010 million
instructions in its tests instead of +166). So the warm runs get ``timing_below`` 50 times
longer (``--timing-below``, ``TELEMETRY_INJECT_TIMING_BELOW``), which makes about the same
decisions as at full speed; the "busy" rule (calls faster than 50,000 a second) is not
scaled, so a function sampled only for being busy is timed here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = '''"""Phase edges for callgrind --dump-before=getppid (bench/session_phases.py)."""
import os

import pytest

os.getppid()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    os.getppid()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    os.getppid()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    os.getppid()


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtestloop(session):
    try:
        return (yield)
    finally:
        os.getppid()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    os.getppid()
'''

PHASES = ("interpreter and pytest start-up", "plugins, options, the session's start", "conftests, configure",
          "collection", "tests", "summary, finish, unconfigure", "exit")
PROBE_NAME = "telemetry_phase_probe"


def count(kind: str, python: str, project: Path, args: list[str], env: dict[str, str], out: Path) -> tuple[list[int], int]:
    """(instructions of each phase of the pytest process, of its children in all)."""
    prefix = out / kind
    done = subprocess.run(["valgrind", "--tool=callgrind", "--dump-before=getppid",
                           f"--callgrind-out-file={prefix}.%p", python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", PROBE_NAME, *args], cwd=project, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1, 5):
        raise SystemExit(f"{kind}: pytest exited {done.returncode}: {(done.stdout + done.stderr)[-600:]}")
    parts: dict[int, dict[int, int]] = {}
    for path in out.glob(f"{kind}.*"):
        match = re.fullmatch(rf"{re.escape(kind)}\.(\d+)(?:\.(\d+))?", path.name)
        if match is None:
            continue
        summary = re.search(r"^summary: (\d+)$", path.read_text(errors="replace"), re.M)
        if summary is not None:
            parts.setdefault(int(match.group(1)), {})[int(match.group(2) or len(PHASES))] = int(summary.group(1))
    main = [pid for pid, found in parts.items() if len(found) == len(PHASES)]
    if len(main) != 1:
        raise SystemExit(f"{kind}: no process with {len(PHASES)} phases in callgrind's output "
                         f"(found {sorted(len(found) for found in parts.values())}): {done.stderr[-600:]}")
    phases = [parts[main[0]][i] for i in range(1, len(PHASES) + 1)]
    children = sum(sum(found.values()) for pid, found in parts.items() if pid != main[0])
    return phases, children


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True, help="the project's folder (its suite runs there)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that has pytest, the project and "
                                                                  "this package (default: this one)")
    parser.add_argument("--disabled", action="store_true", help="also warm with TELEMETRY_INJECT_DISABLED=1")
    parser.add_argument("--timing-below", type=float, default=1e-4,
                        help="the warm runs' timing_below, seconds (default 1e-4: 2 µs at callgrind's ~50 x)")
    parser.add_argument("pytest_args", nargs="*", help="more arguments for pytest (after --)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    project = args.project.resolve()
    out = Path(tempfile.mkdtemp(prefix="ti-phases-"))
    try:
        (out / f"{PROBE_NAME}.py").write_text(PROBE)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"
               and not k.startswith(("PYTEST_", "TELEMETRY_INJECT_"))}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(out), env.get("PYTHONPATH", "")]))
        fill = subprocess.run([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--inject-telemetry",
                               *args.pytest_args], cwd=project, env=env, capture_output=True, text=True)
        if fill.returncode not in (0, 1, 5):
            raise SystemExit(f"the run that fills the cache exited {fill.returncode}: {fill.stdout[-600:]}")
        warm = {**env, "TELEMETRY_INJECT_TIMING_BELOW": repr(args.timing_below)}
        kinds = {"plain": ([], env), "warm": (["--inject-telemetry"], warm)}
        if args.disabled:
            kinds["warm, disabled"] = (["--inject-telemetry"], {**warm, "TELEMETRY_INJECT_DISABLED": "1"})
        counted = {kind: count(kind.replace(", ", "-"), args.python, project, [*extra, *args.pytest_args], kind_env,
                               out) for kind, (extra, kind_env) in kinds.items()}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    columns = {kind: [*phases, sum(phases), children] for kind, (phases, children) in counted.items()}
    others = [kind for kind in columns if kind != "plain"]
    print(f"{project.name}: million instructions per phase (callgrind), plain and warm, and what warm added\n")
    header = f"{'phase':<40} {'plain':>9}" + "".join(f" {kind:>15} {'added':>8}" for kind in others)
    print(header)
    print("-" * len(header))
    for index, name in enumerate([*PHASES, "in all", "child processes"]):
        plain = columns["plain"][index]
        line = f"{name:<40} {plain / 1e6:>9.1f}"
        for kind in others:
            line += f" {columns[kind][index] / 1e6:>15.1f} {(columns[kind][index] - plain) / 1e6:>+8.1f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
