"""The runtime never crashes the interpreter: the stress workload (stress_workload.py) in
fresh interpreters under ``-X dev -X faulthandler``, and real ``pytest -n 2`` sessions
with every report on. Each runs a few times by default; TELEMETRY_INJECT_STRESS_RUNS
raises that (see docs/runtime.md, "Stress test")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = Path(__file__).with_name("stress_workload.py")
RUNS = int(os.environ.get("TELEMETRY_INJECT_STRESS_RUNS", "0") or 0)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_INJECT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("run", range(RUNS or 3))
def test_the_stress_workload_never_crashes(run: int) -> None:
    result = subprocess.run([sys.executable, "-X", "dev", "-X", "faulthandler", str(WORKLOAD)],
                            capture_output=True, text=True, env=_env(), timeout=120)
    assert "Fatal Python error" not in result.stderr, result.stderr
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "stress_workload: ok" in result.stdout


def test_a_hang_prints_where_it_is_stuck_and_exits() -> None:
    # A hung run is killed by nobody but itself: a fork child stuck past its time gets
    # SIGABRT, and its fault handler prints its stack; the parent fails. (The parent's own
    # limit, far away here, would print the parent's stacks only.)
    env = {**_env(), "TELEMETRY_INJECT_STRESS_HANG_AFTER": "80", "TELEMETRY_INJECT_STRESS_CHILD_HANG_AFTER": "3",
           "TELEMETRY_INJECT_STRESS_CHILD_HANGS": "1"}
    result = subprocess.run([sys.executable, "-X", "dev", "-X", "faulthandler", str(WORKLOAD)],
                            capture_output=True, text=True, env=env, timeout=110)
    assert result.returncode == 1 and "stress_workload: ok" not in result.stdout
    assert "fork child" in result.stderr and "hung for 3 s" in result.stderr
    assert "Timeout (" not in result.stderr, "the parent's own limit fired first"
    assert "Fatal Python error: Aborted" in result.stderr and "in main" in result.stderr
    assert f"fork child status: got {int(signal.SIGABRT)}, want 0" in result.stderr  # (killed by the signal)


MODULE = '''
import asyncio
import gc
import threading


def leaf(x):
    return x + 1


def spin(n):
    return sum(leaf(i) for i in range(n))


def gen(n):
    for i in range(n):
        yield leaf(i)


async def fetch(x):
    await asyncio.sleep(0)
    return leaf(x)


async def agen(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


class Holder:
    pass


def abandon(n):
    """Suspended coroutines and generators in reference cycles, collected between calls."""
    for i in range(n):
        holder = Holder()
        if i % 2:
            holder.g = gen(5)
            next(holder.g)
        else:
            holder.g = fetch(i)
            holder.g.send(None)
        holder.me = holder
        del holder
        leaf(i)


def threads(n):
    workers = [threading.Thread(target=spin, args=(200,)) for _ in range(n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


async def tasks(n):
    done = await asyncio.gather(*(fetch(i) for i in range(n)))
    slow = [asyncio.ensure_future(asyncio.sleep(1)) for _ in range(3)]
    await asyncio.sleep(0)
    for task in slow:
        task.cancel()
    await asyncio.gather(*slow, return_exceptions=True)
    g = agen(10)
    await g.__anext__()
    await g.aclose()
    return sum(done)
'''

TESTS = '''
import asyncio
import pytest
from pkg import core


@pytest.mark.parametrize("i", range(6))
def test_threads(i):
    core.threads(4)
    assert core.spin(10) == 55


@pytest.mark.parametrize("i", range(6))
def test_tasks(i):
    assert asyncio.run(core.tasks(20)) == sum(range(1, 21))


@pytest.mark.parametrize("i", range(6))
def test_generators(i):
    core.abandon(2000)
    g = core.gen(10)
    next(g)
    g.close()
    assert list(core.gen(3)) == [1, 2, 3]
'''


@pytest.mark.parametrize("run", range(max(1, RUNS // 5) if RUNS else 2))
def test_an_xdist_session_with_every_report_never_crashes(pytester: pytest.Pytester, run: int) -> None:
    (pytester.path / "pkg").mkdir()
    (pytester.path / "pkg" / "__init__.py").write_text("")
    (pytester.path / "pkg" / "core.py").write_text(textwrap.dedent(MODULE))
    pytester.makepyfile(test_core=TESTS)
    result = pytester.runpytest_subprocess(
        "--inject-telemetry", "-p", "no:cacheprovider", "-n", "2", "--telemetry-self-time", "1",
        "--telemetry-report", "out/x.json", "--telemetry-html", "out/x.html", "--telemetry-trace", "out/t.json")
    output = result.stdout.str() + result.stderr.str()
    assert "Fatal Python error" not in output and "crashed" not in output, output
    assert result.ret == 0, output
    report = json.loads((pytester.path / "out" / "x.json").read_text())
    functions = {f["name"]: f for f in report["functions"]}
    assert functions["spin"]["count"] >= 6 * 5
    assert json.loads((pytester.path / "out" / "t.json").read_text())["traceEvents"]
    assert (pytester.path / "out" / "x.html").stat().st_size > 0


# CPython 3.11 may collect garbage inside the allocation of a frame's Python object, the
# one the self-time sampler asks for when it walks another thread's stack (f_back); a
# finalizer that hands over the GIL there lets that thread return from the frame, and the
# new object points at freed memory. This workload makes that likely: a deep recursion (its
# frames have no Python objects yet, and cross data-stack chunks that are freed on return)
# while cycles wait to be collected whose finalizer sleeps when another thread runs it.
# Before the sampler made room for its allocations, 3.11 crashed in 4 of 6 runs of 3 s.
SLEEPY_FINALIZERS = '''
import sys, threading, time
sys.setrecursionlimit(10000)
MAIN = threading.get_ident()
from pytest_telemetry_inject.runtime import _core
_core.configure(self_time=0.001)


class Finalized:
    def __del__(self):
        if threading.get_ident() != MAIN:  # collected by the sampler: the hazard
            time.sleep(0.002)


def cycle():
    a, b = Finalized(), Finalized()
    a.other, b.other = b, a


def deep(n):
    return 0 if n == 0 else deep(n - 1) + 1


start = time.monotonic()
rounds = 0
while time.monotonic() - start < float(sys.argv[1]):
    assert deep(1500) == 1500
    rounds += 1
    if rounds % 30 == 0:
        cycle()
info = _core.self_time()
assert info and info["samples"] > 0, info
print("sleepy: ok", rounds, info["samples"])
'''


@pytest.mark.parametrize("run", range(max(2, RUNS // 5) if RUNS else 2))
def test_the_sampler_survives_finalizers_that_hand_over_the_gil(tmp_path: Path, run: int) -> None:
    script = tmp_path / "sleepy.py"
    script.write_text(SLEEPY_FINALIZERS)
    result = subprocess.run([sys.executable, "-X", "faulthandler", str(script), "3"],
                            capture_output=True, text=True, env=_env(), timeout=120)
    assert "Fatal Python error" not in result.stderr, result.stderr
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "sleepy: ok" in result.stdout
