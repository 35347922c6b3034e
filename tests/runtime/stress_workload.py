"""A standalone stress workload for the runtime (see docs/runtime.md, "Stress test").

Run it as ``python -X dev -X faulthandler tests/runtime/stress_workload.py``: it writes
modules instrumented the way the engine writes them (the ``with`` form, the generator
span, the try form, the decorator) to a temporary folder, imports them, and drives them
hard in the events mode with every sink on (kept events, JSONL, Chrome trace, self-time
sampler at 1 ms): many threads started and stopped, asyncio tasks gathered and
cancelled, generators and async generators closed early, abandoned and thrown into,
exceptions, mode switches mid-run (configure() toggling keep_events / disabled,
set_current_test() from the main thread while workers run) and a fork whose child makes
calls. It exits 0 when every deterministic count matched; a crash of the interpreter
is what the test that runs it looks for. Stdlib only (the runtime is)."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import importlib.util
import os
import random
import signal
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # (an earlier copy on PYTHONPATH wins)

from pytest_telemetry_inject.runtime import _core  # noqa: E402

HEADER = ("from pytest_telemetry_inject import runtime as _telemetry_runtime\n"
          "_telemetry = _telemetry_runtime.tracer(__name__)\n")

# The with form and the decorator (the engine's --style with / decorator output).
WITH_FORM = '''
import asyncio


class Boom(Exception):
    pass


def leaf(x):
    with _telemetry.span("leaf"):
        return x + 1


def outer(n):
    with _telemetry.span("outer"):
        total = 0
        for i in range(n):
            total += leaf(i)
        return total


def fails(x):
    with _telemetry.span("fails"):
        if x % 3 == 0:
            raise Boom(x)
        return x


def open_gen(n):
    # a plain span across a yield (as in a coroutine): current while suspended
    with _telemetry.span("open_gen"):
        for i in range(n):
            yield leaf(i)


def gen(n):
    with _telemetry.generator_span("gen"):
        for i in range(n):
            yield leaf(i)


async def coro(x):
    with _telemetry.span("coro"):
        await asyncio.sleep(0)
        return leaf(x)


async def slow(x):
    with _telemetry.span("slow"):
        await asyncio.sleep(0.05)
        return x


async def agen(n):
    with _telemetry.generator_span("agen"):
        for i in range(n):
            await asyncio.sleep(0)
            yield leaf(i)


@_telemetry.instrument("deco")
def deco(x):
    return leaf(x) * 2


@_telemetry.instrument("deco_gen")
def deco_gen(n):
    for i in range(n):
        yield leaf(i)


@_telemetry.instrument("deco_coro")
async def deco_coro(x):
    await asyncio.sleep(0)
    return leaf(x)


@_telemetry.instrument("deco_agen")
async def deco_agen(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i
'''

# The try form (the pytest plugin's default style).
TRY_FORM = '''
import asyncio


class Boom(Exception):
    pass


def tleaf(x):
    _telemetry_t = _telemetry.start()
    try:
        return x * 2
    except BaseException:
        _telemetry_t = _telemetry.fail("tleaf", _telemetry_t)
        raise
    finally:
        _telemetry.end("tleaf", _telemetry_t)


def tfails(x):
    _telemetry_t = _telemetry.start()
    try:
        if x % 2:
            raise Boom(x)
        return tleaf(x)
    except BaseException:
        _telemetry_t = _telemetry.fail("tfails", _telemetry_t)
        raise
    finally:
        _telemetry.end("tfails", _telemetry_t)


def tgen(n):
    _telemetry_t = _telemetry.start_generator()
    try:
        for i in range(n):
            yield tleaf(i)
    except BaseException:
        _telemetry_t = _telemetry.fail("tgen", _telemetry_t)
        raise
    finally:
        _telemetry.end("tgen", _telemetry_t)


async def tagen(n):
    _telemetry_t = _telemetry.start_generator()
    try:
        for i in range(n):
            await asyncio.sleep(0)
            yield tleaf(i)
    except BaseException:
        _telemetry_t = _telemetry.fail("tagen", _telemetry_t)
        raise
    finally:
        _telemetry.end("tagen", _telemetry_t)


async def tcoro(x):
    _telemetry_t = _telemetry.start()
    try:
        await asyncio.sleep(0)
        return tleaf(x)
    except BaseException:
        _telemetry_t = _telemetry.fail("tcoro", _telemetry_t)
        raise
    finally:
        _telemetry.end("tcoro", _telemetry_t)
'''


def load(folder: Path, name: str, source: str):
    path = folder / f"{name}.py"
    path.write_text(HEADER + textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def check(what: str, got: object, want: object) -> None:
    if got != want:
        print(f"stress_workload: {what}: got {got!r}, want {want!r}", file=sys.stderr)
        sys.exit(1)


class Holder:
    pass


def cycles(w, t, n: int) -> None:
    """Suspended generators and coroutines whose span is current, in reference cycles,
    between spans."""
    for i in range(n):
        holder = Holder()
        if i % 2:
            holder.g = w.open_gen(3)
            next(holder.g)
        else:  # the try form's coroutine, suspended in its await
            holder.g = t.tcoro(i)
            holder.g.send(None)
        holder.me = holder
        del holder
        w.leaf(i)


def generators(w, t, rng: random.Random) -> None:
    """Generators closed early, abandoned, thrown into, exhausted."""
    for _ in range(20):
        g = w.gen(10)
        next(g)
        g.close()  # closed early
        g = w.deco_gen(10)
        next(g)
        next(g)
        try:
            g.throw(w.Boom("in"))  # thrown into
        except w.Boom:
            pass
        g = t.tgen(5)
        next(g)
        del g  # abandoned (finalised by refcount)
        list(w.gen(3))
        list(w.deco_gen(3))
        list(t.tgen(3))
        keep = [w.gen(5), t.tgen(5), w.deco_gen(5)]
        for g in keep:
            next(g)
        # handed to another thread to finish: the span was begun in this one
        finisher = threading.Thread(target=lambda gs=keep: [list(g) for g in gs])
        finisher.start()
        finisher.join()
        # abandoned in a reference cycle, its span still open: only the cyclic GC
        # finalises it, possibly inside a ContextVar.set of this thread (see
        # _core._gc_thread: CPython 3.11 crashed there before)
        for make in (w.open_gen, w.gen, w.deco_gen, t.tgen):
            holder = Holder()
            holder.g = make(5)
            next(holder.g)
            holder.me = holder
            del holder
            w.leaf(0)
        if rng.random() < 0.3:
            gc.collect()


async def async_main(w, t) -> None:
    tasks = [asyncio.ensure_future(w.coro(i)) for i in range(30)]
    tasks += [asyncio.ensure_future(w.deco_coro(i)) for i in range(30)]
    tasks += [asyncio.ensure_future(t.tcoro(i)) for i in range(30)]
    await asyncio.gather(*tasks)
    slow = [asyncio.ensure_future(w.slow(i)) for i in range(20)]
    await asyncio.sleep(0.005)
    for task in slow[::2]:
        task.cancel()  # cancelled mid-span
    await asyncio.gather(*slow, return_exceptions=True)
    for make in (w.agen, w.deco_agen, t.tagen):
        ag = make(10)
        await ag.__anext__()
        await ag.aclose()  # closed early
        ag = make(10)
        await ag.__anext__()
        try:
            await ag.athrow(ValueError("in"))  # thrown into
        except ValueError:
            pass
        ag = make(10)
        await ag.__anext__()
        del ag  # abandoned: asyncio's asyncgen hooks finalise it
        async for _ in make(3):
            pass
    # an async generator stepped by different tasks
    ag = w.agen(6)
    for _ in range(3):
        await asyncio.ensure_future(ag.__anext__())
    await ag.aclose()
    waiter = asyncio.ensure_future(asyncio.wait_for(w.slow(0), 0.001))
    try:
        await waiter
    except asyncio.TimeoutError:
        pass


def worker(w, t, seed: int, stop: threading.Event, errors: list) -> None:
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            w.outer(20)
            cycles(w, t, 30)
            for i in range(10):
                try:
                    w.fails(i)
                except w.Boom:
                    pass
                try:
                    t.tfails(i)
                except t.Boom:
                    pass
                w.deco(i)
            generators(w, t, rng) if rng.random() < 0.3 else None
            if rng.random() < 0.2:
                asyncio.run(async_main(w, t), debug=False)
            if rng.random() < 0.3:  # short-lived threads, started and stopped
                inner = [threading.Thread(target=w.outer, args=(5,)) for _ in range(4)]
                for th in inner:
                    th.start()
                for th in inner:
                    th.join()
    except BaseException as error:  # noqa: BLE001
        errors.append(repr(error))


def deterministic(w, t) -> None:
    """One thread, no mode switches: the counts are exact."""
    _core.configure(disabled=False, keep_events=True)
    _core.reset()
    _core.set_current_test("stress::exact")
    w.outer(10)  # outer 1, leaf 10
    for i in range(6):
        try:
            w.fails(i)  # fails 6 (2 errors: 0, 3)
        except w.Boom:
            pass
        try:
            t.tfails(i)  # tfails 6 (3 errors), tleaf 3
        except t.Boom:
            pass
    g = w.gen(5)
    next(g)
    g.close()  # gen 1, leaf 1
    list(t.tgen(4))  # tgen 1, tleaf 4
    asyncio.run(async_main(w, t), debug=False)  # its own counts; checked below for a few names
    _core.set_current_test(None)
    rows = {r["name"]: r for r in _core.snapshot() if r["module"] in (w.__name__, t.__name__)}
    check("outer calls", rows["outer"]["count"], 1)
    check("fails calls", rows["fails"]["count"], 6)
    check("fails errors", rows["fails"]["errors"], 2)
    check("tfails calls", rows["tfails"]["count"], 6)
    check("tfails errors", rows["tfails"]["errors"], 3)
    check("gen calls", rows["gen"]["count"], 1)
    check("tgen calls", rows["tgen"]["count"], 1)
    check("coro calls", rows["coro"]["count"], 30)
    check("deco_coro calls", rows["deco_coro"]["count"], 30)
    check("tcoro calls", rows["tcoro"]["count"], 30)
    check("slow calls", rows["slow"]["count"], 21)
    check("slow errors", rows["slow"]["errors"], 11)  # 10 cancelled, 1 timed out (CancelledError counts)
    kept = [e for e in _core.events() if e.get("test") == "stress::exact"]
    check("events kept for outer", sum(1 for e in kept if e["name"] == "outer"), 1)


def wait_child(pid: int, within: float) -> int:
    """The forked child's exit status; a child still running after ``within`` seconds is
    hung: SIGABRT makes its fault handler (inherited with ``-X faulthandler``) print where it
    is stuck, to the stderr the test reads."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    print(f"stress_workload: fork child {pid} hung for {within:.0f} s: its stack follows", file=sys.stderr)
    sys.stderr.flush()
    os.kill(pid, signal.SIGABRT)
    return os.waitpid(pid, 0)[1]


def main() -> int:
    seconds = float(os.environ.get("TELEMETRY_INJECT_STRESS_SECONDS", "1"))
    # A hang (the test's subprocess times out after 120 s) prints every thread's stack and
    # exits, instead of being killed without a word: where it hung is the finding.
    hang = float(os.environ.get("TELEMETRY_INJECT_STRESS_HANG_AFTER", "90"))
    faulthandler.dump_traceback_later(hang, exit=True)
    child_hang = float(os.environ.get("TELEMETRY_INJECT_STRESS_CHILD_HANG_AFTER", hang / 2))
    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
    folder = Path(tempfile.mkdtemp(prefix="ti_stress_"))
    _core.configure(keep_events=True, jsonl=str(folder / "events-{pid}.jsonl"),
                    trace=str(folder / "trace-{pid}.json"), max_events=3_000, self_time=0.001)
    w = load(folder, f"ti_stress_with_{os.getpid()}", WITH_FORM)
    t = load(folder, f"ti_stress_try_{os.getpid()}", TRY_FORM)
    deterministic(w, t)
    cycles(w, t, 5_000)

    stop = threading.Event()
    errors: list = []
    threads = [threading.Thread(target=worker, args=(w, t, i, stop, errors), daemon=True)
               for i in range(3)]
    for th in threads:
        th.start()
    rng = random.Random(1)
    end = time.monotonic() + seconds
    step = 0
    forked = 0
    while time.monotonic() < end or step < 12:
        step += 1
        _core.set_current_test(f"stress::t{step}")  # from the main thread, workers running
        choice = step % 7
        if choice == 1:
            _core.configure(keep_events=False)
        elif choice == 2:
            _core.configure(keep_events=True)
        elif choice == 3:
            _core.configure(disabled=True)
        elif choice == 4:
            _core.configure(disabled=False)
        elif choice == 5:
            _core.configure(self_time=rng.choice((0.001, 0.002, 0)))
        elif choice == 6:
            _core.configure(self_time=0.001)
        if step % 4 == 0 and hasattr(os, "fork") and forked < 3:
            forked += 1
            pid = os.fork()
            if pid == 0:  # the child: calls of its own, with threads, then a quick exit
                code = 0
                try:
                    if os.environ.get("TELEMETRY_INJECT_STRESS_CHILD_HANGS"):  # (test_stress: the report of a hang)
                        threading.Event().wait()
                    _core.configure(disabled=False)  # the parent may have been off
                    w.outer(5)
                    list(w.gen(3))
                    asyncio.run(async_main(w, t), debug=False)
                    th = threading.Thread(target=w.outer, args=(5,))
                    th.start()
                    th.join()
                    rows = {r["name"]: r for r in _core.snapshot() if r["module"] == w.__name__}
                    code = 0 if rows.get("outer", {}).get("count", 0) >= 2 else 3
                    if code:
                        print("child rows", rows, _core.configure(), file=sys.stderr)
                    _core.flush()
                except BaseException:  # noqa: BLE001
                    code = 4
                os._exit(code)
            check("fork child status", wait_child(pid, child_hang), 0)
        w.outer(3)
        time.sleep(0.002)
    stop.set()
    for th in threads:
        th.join(30)
        check("worker stopped", th.is_alive(), False)
    check("worker errors", errors, [])
    _core.set_current_test(None)
    _core.configure(disabled=False, keep_events=True)
    rows = {r["name"]: r for r in _core.snapshot() if r["module"] == w.__name__}
    if rows.get("outer", {}).get("count", 0) < 1:
        check("outer counted", rows.get("outer"), "a row")
    _core.flush()
    _core.configure(self_time=0)
    faulthandler.cancel_dump_traceback_later()
    print(f"stress_workload: ok ({step} steps, {forked} forks, {len(_core.events())} events kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
