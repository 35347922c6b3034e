"""Overhead of the telemetry runtime per call, side by side with the alternatives.

    python bench/runtime_overhead.py [--quick] [--rounds N] [--json PATH]
    python bench/runtime_overhead.py --instructions
    python bench/runtime_overhead.py --switch | --coverage

Every variant is a module holding ``def f(x): return x + 1`` as the engine instruments it
(target ``runtime``, in each style: ``try`` — the pytest plugin's default —, ``with`` and
``decorator``), or as the alternative writes it (a hand-written OpenTelemetry span;
Logfire's auto-tracing rewrites the bare module on import). All variants are timed in the same process, round
after round, interleaved (so a noisy neighbour hits them all alike); each round times a
batch of calls (up to 200000) per variant and the bare function in the same round. The
figure is the smallest per-call cost above the bare call over the rounds (timeit's
advice: the minimum is the run least disturbed); the median is printed beside it.

Targets (PASS/FAIL), for the try style: the default aggregator at most 350 ns above a bare
call, disabled at most 100 ns; on the fly (the try style compiled by the import hook, as
``pytest --inject-telemetry`` runs it) at most 200 and 60 ns; the OpenTelemetry sink at most 1.2 times a hand-written
OpenTelemetry span (both above the bare call; the median over the rounds of the two timed
back to back, the ratio of their minima printed beside). For comparison only, two more rows: a
hand-written span carrying the same three code attributes as the sink's, and the SDK calls
any sink must make to carry them and make the span current (``start_span`` with the
attributes, ``attach``/``detach``, ``end``), written inline with nothing else: the floor of
every sink on this SDK. "floor" is a ``with`` block on an empty context manager with C
``__enter__``: what the calling convention itself costs on this machine, before the runtime
does anything.

The rows marked "sampled" are a hot, cheap site after the runtime started timing one call
of 16 (``timing_every``; every call still counted), its period kept from growing
(``_core._GROW_MAX`` 1): the other rows time every call (``timing_every=1``). The "grown
period" row is the same site after it stayed cheap long enough (more than 16,000 calls) for
the runtime to time one call of 256.

After the table: the per-test switch, a call that raises, and the on-the-fly rows and a
test's switches under coverage.py's tracer beside the same without it (``--switch`` and
``--coverage`` print only those).

``--instructions`` counts, under valgrind's callgrind, the instructions one call of each
targeted row executes above a bare call, and the OpenTelemetry sink's ratio to the
hand-written span in instructions: a figure a busy machine does not move (each row runs in
processes of its own; a few minutes in all).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BARE = "def f(x):\n    return x + 1\n"
HEADER = ("from pytest_telemetry_inject import runtime as _telemetry_runtime\n"
          "_telemetry = _telemetry_runtime.tracer(__name__)\n")


def instrumented_source(style: str) -> str:
    """BARE as the engine instruments it for the runtime target."""
    from pytest_telemetry_inject.engine.pipeline import Engine
    from pytest_telemetry_inject.settings import Settings

    result = Engine(Settings(style=style, target="runtime"), cache=None).instrument(BARE.encode(), "f.py")
    assert result.output is not None, result.reason
    return result.output.decode()
FLOOR = ("class _Empty:\n    __slots__ = ()\n    __enter__ = {}.clear\n"
         "    def __exit__(self, et, ev, tb):\n        pass\n\n_EMPTY = _Empty()\n\n"
         "def f(x):\n    with _EMPTY:\n        return x + 1\n")
OTEL_BY_HAND = ("from opentelemetry import trace\n_tracer = trace.get_tracer(__name__)\n\n"
                "def f(x):\n    with _tracer.start_as_current_span(\"f\"):\n        return x + 1\n")
# The same, carrying what the runtime's spans carry: the three code attributes.
OTEL_BY_HAND_CODE = ("from opentelemetry import trace\n_tracer = trace.get_tracer(__name__)\n"
                     "_code = {\"code.function.name\": __name__ + \".f\", \"code.file.path\": __file__, \"code.line.number\": 5}\n\n"
                     "def f(x):\n    with _tracer.start_as_current_span(\"f\", attributes=_code):\n"
                     "        return x + 1\n")

# The least any sink can do with the SDK and still carry the three attributes and make the
# span current (children nest under it): the SDK's calls alone, inline, no bookkeeping.
OTEL_SINK_FLOOR = ("from opentelemetry import context, trace\n_tracer = trace.get_tracer(__name__)\n"
                   "_code = {\"code.function.name\": __name__ + \".f\", \"code.file.path\": __file__, \"code.line.number\": 7}\n"
                   "_attach, _detach, _current = context.attach, context.detach, trace.set_span_in_context\n\n"
                   "def f(x):\n    span = _tracer.start_span(\"f\", attributes=_code)\n"
                   "    token = _attach(_current(span))\n    try:\n        return x + 1\n"
                   "    finally:\n        _detach(token)\n        span.end()\n")

TARGET_AGG_NS = 350.0
TARGET_OFF_NS = 100.0
TARGET_FLY_NS = 200.0  # on the fly (pytest --inject-telemetry): the aggregator
TARGET_FLY_OFF_NS = 60.0  # on the fly, disabled
TARGET_OTEL_RATIO = 1.2
SAMPLED = "runtime, on the fly: aggregator, sampled"
GROWN = "runtime, on the fly: aggregator, sampled, grown period"


class Variant:
    def __init__(self, label: str, func: Callable[[int], int], setup: Callable[[], None] | None = None,
                 note: str = "") -> None:
        self.label = label
        self.func = func
        self.setup = setup
        self.note = note
        self.number = 0
        self.samples: list[float] = []  # ns per call above bare, one per round
        self.raw: list[float] = []  # ns per call


def paired_ratio(variant: Variant, reference: Variant) -> float:
    """The median over the rounds of ``variant``'s cost over ``reference``'s in the same
    round. The two are timed back to back in every round, so a slow spell of the machine
    moves both; the ratio of two minima taken from different rounds moves with whichever
    variant had the luckier batch (for a 12 us OpenTelemetry span the rounds' figures
    spread by a third on a shared VM)."""
    return statistics.median(v / r for v, r in zip(variant.samples, reference.samples))


def write_module(folder: Path, name: str, text: str) -> Callable[[int], int]:
    (folder / f"{name}.py").write_text(text)
    module = importlib.import_module(name)
    return module.f


def on_the_fly(folder: Path, name: str, source: str = BARE) -> Callable[[int], int]:
    """``source`` (BARE) as ``pytest --inject-telemetry`` runs it: the try style's text
    compiled by the import hook's compiler (the start time on the value stack, no ``fail``
    call)."""
    import types

    from pytest_telemetry_inject.engine.compiler import compile_mapped
    from pytest_telemetry_inject.engine.pipeline import Engine
    from pytest_telemetry_inject.plugin.importhook import _bound
    from pytest_telemetry_inject.settings import Settings

    path = folder / f"{name}.py"
    path.write_text(source)
    result = Engine(Settings(style="try", target="runtime"), cache=None).instrument(source.encode(), str(path))
    assert result.output is not None, result.reason
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    code = compile_mapped(result.output.decode(), result.get_line_map(), str(path), style="try")
    exec(_bound(code, name), module.__dict__)  # bound as the import hook binds it
    return module.f  # type: ignore[no-any-return]


def time_batch(func: Callable[[int], int], number: int) -> float:
    """ns per call of ``func(1)`` over ``number`` calls (the loop's own cost included; it
    cancels out against the bare function's batch)."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(number):
            func(1)
        return (time.perf_counter_ns() - start) / number
    finally:
        if gc_was:
            gc.enable()


def import_time_us() -> tuple[float, float]:
    """Cumulative import time (us) of ``pytest_telemetry_inject.runtime`` and of its
    ``_core`` alone, from ``python -X importtime``: best of 5 fresh interpreters, with the
    bytecode cache warm (kept under a temporary PYTHONPYCACHEPREFIX, not in the tree)."""
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("TELEMETRY_INJECT_")}
    env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="ti-bench-pycache-")
    command = [sys.executable, "-X", "importtime", "-c", "import pytest_telemetry_inject.runtime"]
    subprocess.run(command, capture_output=True, env=env, cwd=str(ROOT))  # writes the cache
    best_pkg = best_core = float("inf")
    try:
        for _ in range(5):
            out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(ROOT)).stderr
            for line in out.splitlines():
                parts = [p.strip() for p in line.split("|")]
                if len(parts) == 3 and parts[2] == "pytest_telemetry_inject.runtime":
                    best_pkg = min(best_pkg, float(parts[1]))
                if len(parts) == 3 and parts[2] == "pytest_telemetry_inject.runtime._core":
                    best_core = min(best_core, float(parts[1]))
    finally:
        shutil.rmtree(env["PYTHONPYCACHEPREFIX"], ignore_errors=True)
    return best_pkg, best_core


def make_variants(work: Path, *, logfire_rows: bool = True) -> tuple[Callable[[int], int], list[Variant], list[str]]:
    """The bare function, every variant (modules written under ``work``, which goes on
    ``sys.path``) and notes on the rows left out."""
    from pytest_telemetry_inject import runtime
    from pytest_telemetry_inject.runtime import _core

    sys.path.insert(0, str(work))
    jsonl_path = work / "events.jsonl"
    trace_path = work / "trace.json"

    bare = write_module(work, "bench_bare", BARE)
    floor = write_module(work, "bench_floor", FLOOR)
    styles = {style: write_module(work, f"bench_runtime_{style}", instrumented_source(style))
              for style in ("try", "with", "decorator")}
    instrumented = styles["try"]
    compiled = on_the_fly(work, "bench_runtime_on_the_fly")

    def configure(grow_max: int = _core._GROW_MAX, **settings: object) -> Callable[[], None]:
        # Every call timed (timing_every 1) unless the row says otherwise: the rows before
        # the sampled ones measure the exact path. ``grow_max`` 1: a sampled site keeps its
        # first period (else, cheap, it grows within the row's batch: the grown row).
        base = {"disabled": False, "jsonl": "", "trace": "", "otel": False, "keep_events": False,
                "min_duration": 0.0, "sample_rate": 1.0, "timing_every": 1, "timing_after": 256,
                "timing_below": 2e-6}
        base.update(settings)

        def setup() -> None:
            _core._GROW_MAX = grow_max
            runtime.configure(**base)
            runtime.reset()
            for stale in (jsonl_path, trace_path):
                if stale.exists():
                    stale.unlink()
        return setup

    def grown(func: Callable[[int], int]) -> Callable[[], None]:
        # Sampled, then called with a fold (as a test switch makes) every 2,000 calls until
        # the runtime lengthened the site's period to its longest.
        sampled = configure(timing_every=16, timing_below=1.0)

        def setup() -> None:
            sampled()
            for _ in range(200):
                for _ in range(2_000):
                    func(1)
                runtime.snapshot()
                if any(site.every >= 16 * _core._GROW_MAX for site in _core._sites.values()):
                    return
            raise SystemExit("the sampled site's period did not grow: see runtime/_core.py, _redecide")
        return setup

    variants = [
        Variant("floor: empty with-block (C __enter__)", floor, configure(), "reference"),
        Variant("runtime: default aggregator", instrumented, configure(), "try style"),
        Variant("runtime: disabled", instrumented, configure(disabled=True), "try style"),
        Variant("runtime, on the fly: aggregator", compiled, configure(), "pytest --inject-telemetry"),
        Variant("runtime, on the fly: disabled", compiled, configure(disabled=True), "pytest --inject-telemetry"),
        # A hot, cheap site once sampled (the default settings: one call of 16 timed after
        # 256; timing_below raised so that a slow machine, or valgrind, samples it too).
        Variant(SAMPLED, compiled, configure(1, timing_every=16, timing_below=1.0), "1 call of 16 timed, all counted"),
        Variant("runtime: default aggregator, sampled", instrumented, configure(1, timing_every=16, timing_below=1.0),
                "try style's text"),
        Variant(GROWN, compiled, grown(compiled), "1 call of 256 timed, all counted"),
        Variant("runtime, with style: aggregator", styles["with"], configure()),
        Variant("runtime, with style: disabled", styles["with"], configure(disabled=True)),
        Variant("runtime, decorator style: aggregator", styles["decorator"], configure()),
        Variant("runtime, decorator style: disabled", styles["decorator"], configure(disabled=True),
                "the function itself"),
        Variant("runtime: JSONL sink", instrumented, configure(jsonl=str(jsonl_path))),
        Variant("runtime: JSONL, min_duration 1 ms", instrumented, configure(jsonl=str(jsonl_path), min_duration=0.001),
                "events filtered out"),
        Variant("runtime: Chrome trace sink", instrumented, configure(trace=str(trace_path))),
    ]

    otel_note = ""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

        class NoopProcessor(SpanProcessor):
            """Receives every span and drops it (the SDK's work stays, export does not)."""

        provider = TracerProvider()
        provider.add_span_processor(NoopProcessor())
        trace.set_tracer_provider(provider)
        by_hand = write_module(work, "bench_otel_by_hand", OTEL_BY_HAND)
        variants.append(Variant("runtime: OpenTelemetry sink", instrumented, configure(otel=True)))
        variants.append(Variant("OpenTelemetry SDK span by hand", by_hand, configure()))
        by_hand_code = write_module(work, "bench_otel_by_hand_code", OTEL_BY_HAND_CODE)
        variants.append(Variant("by hand, with the 3 code attributes", by_hand_code, configure(),
                                "what the sink's spans carry"))
        sink_floor = write_module(work, "bench_otel_sink_floor", OTEL_SINK_FLOOR)
        variants.append(Variant("SDK calls a sink needs, inline", sink_floor, configure(),
                                "start_span(attributes) + attach/detach + end: any sink's floor"))
    except ImportError:
        otel_note = "opentelemetry-sdk not installed: OpenTelemetry rows skipped"

    logfire_note = ""
    try:
        import logfire
    except ImportError:
        logfire = None
        logfire_note = "logfire: not installed (pip install logfire): Logfire rows skipped"
    if not logfire_rows:
        logfire, logfire_note = None, ""
    if logfire is not None:
        import logging
        import warnings

        # Logfire sets its own global TracerProvider; ours is already set (for the rows
        # above), and OpenTelemetry logs a warning about it: expected, not news.
        logging.getLogger("opentelemetry.trace").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logfire.configure(send_to_logfire=False, console=False, inspect_arguments=False)
            (work / "bench_logfire_all.py").write_text(BARE)
            (work / "bench_logfire_min.py").write_text(BARE)
            logfire.install_auto_tracing(modules=["bench_logfire_all"], min_duration=0)
            logfire.install_auto_tracing(modules=["bench_logfire_min"], min_duration=0.001)
            all_calls = importlib.import_module("bench_logfire_all").f
            min_calls = importlib.import_module("bench_logfire_min").f
        variants.append(Variant("Logfire auto-tracing, min_duration=0", all_calls, configure()))
        variants.append(Variant("Logfire auto-tracing, min_duration=1 ms", min_calls, configure(),
                                "cheapest path"))

    return bare, variants, [note for note in (otel_note, logfire_note) if note]


# -- instruction counts (--instructions) ---------------------------------------------------
#
# Wall time on a shared VM moves by tens of percent from one minute to the next; the number
# of instructions a call executes does not (callgrind counts them in a simulated CPU; the
# same command gives the same count to a few hundred instructions). Each variant runs in a
# process of its own under valgrind twice, with SMALL and LARGE calls after the same set-up:
# the difference over LARGE - SMALL calls is the cost of one call, start-up cancelled out.

COUNTED = ["runtime: default aggregator", "runtime: disabled", "runtime, on the fly: aggregator",
           "runtime, on the fly: disabled", SAMPLED, GROWN, "runtime: default aggregator, sampled",
           "runtime, with style: aggregator",
           "runtime: OpenTelemetry sink", "OpenTelemetry SDK span by hand", "by hand, with the 3 code attributes",
           "SDK calls a sink needs, inline"]
SMALL, LARGE = 1_000, 6_000


def run_calls(label: str, number: int) -> int:
    """(A child of --instructions.) Set ``label``'s variant up, warm it, call it ``number`` times."""
    work = Path(tempfile.mkdtemp(prefix="ti-bench-"))
    try:
        bare, variants, _notes = make_variants(work, logfire_rows=False)
        func = bare
        if label != "bare":
            (variant,) = [v for v in variants if v.label == label]
            if variant.setup:
                variant.setup()
            func = variant.func
        for _ in range(200):
            func(1)
        for _ in range(1_100):  # past timing_after: a sampled row is sampled from here on
            func(1)
        for _ in range(number):
            func(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def instructions(label: str, number: int) -> int:
    """Instructions the child executes for ``label`` and ``number`` calls, as callgrind counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_INJECT_")}
    env["PYTHONHASHSEED"] = "0"  # the same dict layouts in every child
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                           str(Path(__file__).resolve()), "--run-calls", label, str(number)],
                          capture_output=True, text=True, env=env, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no count for {label!r}: {done.stderr[-300:]}")
    return int(found.group(1))


def count_instructions() -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    print(f"Python {platform.python_version()} ({platform.python_implementation()}) on {platform.machine()}; "
          f"instructions per call (callgrind), from {SMALL} and {LARGE} calls")

    def per_call(label: str) -> float:
        return (instructions(label, LARGE) - instructions(label, SMALL)) / (LARGE - SMALL)

    bare = per_call("bare")
    print(f"\nbare call: {bare:.0f} instructions per call (loop included)\n")
    costs: dict[str, float] = {}
    for label in COUNTED:
        try:
            costs[label] = per_call(label) - bare
        except subprocess.CalledProcessError:  # no such row here (no OpenTelemetry SDK)
            continue
        print(f"{label:<40} {costs[label]:>10.0f} above bare")
    sink, hand = costs.get("runtime: OpenTelemetry sink"), costs.get("OpenTelemetry SDK span by hand")
    if sink and hand:
        print(f"\nOpenTelemetry sink / hand-written span: {sink / hand:.3f} x in instructions "
              f"(target <= {TARGET_OTEL_RATIO} x, in time)")
    return 0


# -- the per-test switch -----------------------------------------------------------------------
#
# The plugin calls set_current_test() before and after every test: it folds the calls counted
# since the last switch into the test they belong to. It must cost what the test called, not
# what the project has: timed with 100, 1,000 and 10,000 instrumented functions in the process,
# 10 of them called between two switches (in one process, in that order).

SWITCH_SITES = (100, 1_000, 10_000)
SWITCH_CALLED = 10
TARGET_SWITCH_RATIO = 2.0  # 10,000 sites against 100: at most this many times the cost


def switch_module(work: Path, sites: int) -> object:
    body = "".join(f'''
def g{i}(x):
    _telemetry_t = _telemetry.start()
    try:
        return x + {i}
    except BaseException:
        _telemetry_t = _telemetry.fail("g{i}", _telemetry_t)
        raise
    finally:
        _telemetry.end("g{i}", _telemetry_t)
''' for i in range(sites))
    name = f"bench_switch_{sites}"
    (work / f"{name}.py").write_text(HEADER + body)
    return importlib.import_module(name)


def switch_costs(work: Path, switches: int = 2_000) -> list[tuple[int, float, float]]:
    """(functions in the process, smallest and median µs of one switch). The functions are
    made in steps (100, then 1,000, then 10,000: a site, once made, stays for the process's
    life), each step timed over ``switches`` switches."""
    from pytest_telemetry_inject import runtime

    if str(work) not in sys.path:
        sys.path.insert(0, str(work))
    runtime.configure(disabled=False, jsonl="", trace="", otel=False, keep_events=False, min_duration=0.0,
                      sample_rate=1.0)
    module = switch_module(work, max(SWITCH_SITES))
    functions = [getattr(module, f"g{i}") for i in range(max(SWITCH_SITES))]
    clock = time.perf_counter
    rows = []
    made = 0
    for n in SWITCH_SITES:
        for function in functions[made:n]:  # their first calls make the sites
            function(1)
        made = n
        called = functions[:n:n // SWITCH_CALLED][:SWITCH_CALLED]
        timings = []
        for k in range(switches):
            for function in called:
                function(1)
            start = clock()
            runtime.set_current_test(f"t{n}_{k}")
            timings.append(clock() - start)
        rows.append((n, min(timings) * 1e6, statistics.median(timings) * 1e6))
    runtime.set_current_test(None)
    runtime.reset()
    return rows


def print_switch_costs(work: Path) -> list[tuple[int, float, float]]:
    rows = switch_costs(work)
    print(f"\nper-test switch (set_current_test), {SWITCH_CALLED} functions called per test:")
    for sites, low, median in rows:
        print(f"  {sites:>6,} functions in the process: {low:7.2f} µs (median {median:7.2f})")
    ratio = rows[-1][2] / rows[0][2]
    verdict = "PASS" if ratio <= TARGET_SWITCH_RATIO else "FAIL"
    print(f"  {rows[-1][0]:,} against {rows[0][0]:,} functions: {ratio:.2f} x (medians; "
          f"target <= {TARGET_SWITCH_RATIO} x: the cost does not grow with the project) {verdict}")
    return rows


# -- calls that raise --------------------------------------------------------------------------
#
# A call that raises leaves through the try form's exception path, which counts its error:
# a parser using exceptions for control flow makes many of them (pyparsing's suite: 15
# million of its 72 million calls). Timed apart from the rows above: the loop catches.

RAISING = "class Boom(Exception):\n    pass\n\n\ndef f(x):\n    raise Boom(x)\n"


def raise_costs(work: Path, rounds: int, number: int = 100_000) -> dict[str, float]:
    """Smallest ns per call, each in a loop that catches, of a function that raises: plain,
    on the fly timed on every call, and on the fly sampled (its untimed calls), interleaved."""
    from pytest_telemetry_inject import runtime

    plain = write_module(work, "bench_raise_plain", RAISING)
    fly = on_the_fly(work, "bench_raise_fly", RAISING)
    boom = (sys.modules["bench_raise_plain"].Boom, sys.modules["bench_raise_fly"].Boom)

    def batch(func: Callable[[int], int]) -> float:
        gc_was = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            for _ in range(number):
                try:
                    func(1)
                except boom:
                    pass
            return (time.perf_counter_ns() - start) / number
        finally:
            if gc_was:
                gc.enable()

    def every_call() -> None:
        runtime.configure(timing_every=1)
        runtime.reset()

    def sampled() -> None:
        runtime.configure(timing_every=16, timing_after=256, timing_below=1.0)
        runtime.reset()
        for _ in range(20):
            batch(fly)
            runtime.snapshot()  # a fold

    rows: dict[str, list[float]] = {"plain": [], "on the fly, every call timed": [], "on the fly, sampled": []}
    for _ in range(rounds):
        rows["plain"].append(batch(plain))
        every_call()
        rows["on the fly, every call timed"].append(batch(fly))
        sampled()
        rows["on the fly, sampled"].append(batch(fly))
    runtime.configure(timing_every=16, timing_after=256, timing_below=2e-6)
    runtime.reset()
    return {label: min(values) for label, values in rows.items()}


def print_raise_costs(work: Path, rounds: int) -> dict[str, float]:
    costs = raise_costs(work, rounds)
    print("\na call that raises (def f(x): raise Boom(x), caught by the loop), smallest of interleaved rounds:")
    for label, ns in costs.items():
        above = "" if label == "plain" else f"  ({ns - costs['plain']:7.1f} above plain)"
        print(f"  {label:<30} {ns:8.1f} ns{above}")
    return costs


# -- under coverage.py ---------------------------------------------------------------------------
#
# A suite run with ``pytest --cov`` runs under coverage.py's tracer. On CPython 3.11 that
# tracer (a C function at ``sys.settrace``'s level) is called for every line of every Python
# frame, measured or not, and a frame run under it runs each instruction unspecialised: the
# runtime's own Python code (a timed call's end, a test switch's folds) costs several times
# what it costs without, and so does the entry's count of an untimed call. Timed here beside
# the same rows without the tracer: the function's own module is measured (with branches), as
# ``--cov=<package> --cov-branch`` measures a project's.

COVERAGE_ROWS = ("bare call", "on the fly, every call timed", "on the fly, sampled (1 of 16)",
                 "a test's two switches")


def coverage_costs(work: Path, rounds: int, number: int = 100_000) -> dict[str, dict[str, float]] | None:
    """{"without": {row: ns}, "with": {row: ns}}: the smallest ns per call (the bare call's
    own; the others above it) and per test (its two switches, after 10 functions were called
    3 times each), without and with coverage.py tracing, interleaved; None without
    coverage.py."""
    try:
        import coverage
    except ImportError:
        return None
    from pytest_telemetry_inject import runtime
    from pytest_telemetry_inject.runtime import _core

    if str(work) not in sys.path:
        sys.path.insert(0, str(work))
    bare = write_module(work, "bench_cov_bare", BARE)
    fly = on_the_fly(work, "bench_cov_fly")
    called = [on_the_fly(work, f"bench_cov_switch{i}") for i in range(SWITCH_CALLED)]
    base = {"disabled": False, "jsonl": "", "trace": "", "otel": False, "keep_events": False, "min_duration": 0.0,
            "sample_rate": 1.0, "timing_after": 256, "timing_below": 1.0}
    grow_max = _core._GROW_MAX

    def timed_every() -> None:
        runtime.configure(**base, timing_every=1)
        runtime.reset()

    def sampled() -> None:
        _core._GROW_MAX = 1  # (its first period kept, as the sampled row of the table)
        runtime.configure(**base, timing_every=16)
        runtime.reset()
        for _ in range(1_300):  # (decided after 256 timed calls)
            fly(1)

    def switches(count: int = 200) -> float:
        best = math.inf
        for k in range(count):
            for function in called:
                function(1)
                function(2)
                function(3)
            start = time.perf_counter_ns()
            runtime.set_current_test(f"t{k}")
            runtime.set_current_test(None)
            best = min(best, time.perf_counter_ns() - start)
        return best

    raw: dict[str, dict[str, list[float]]] = {kind: {row: [] for row in COVERAGE_ROWS} for kind in ("without", "with")}
    tracer = coverage.Coverage(data_file=None, branch=True, source=[str(work)])
    try:
        for _ in range(rounds):
            for kind in ("without", "with"):
                if kind == "with":
                    tracer.start()
                try:
                    rows = raw[kind]
                    rows["bare call"].append(time_batch(bare, number))
                    timed_every()
                    rows["on the fly, every call timed"].append(time_batch(fly, number))
                    sampled()
                    rows["on the fly, sampled (1 of 16)"].append(time_batch(fly, number))
                    _core._GROW_MAX = grow_max
                    timed_every()
                    rows["a test's two switches"].append(switches())
                finally:
                    if kind == "with":
                        tracer.stop()
    finally:
        _core._GROW_MAX = grow_max
        runtime.configure(**{**base, "timing_below": 2e-6}, timing_every=16)
        runtime.reset()
    out: dict[str, dict[str, float]] = {}
    for kind, rows in raw.items():
        bare_ns = min(rows["bare call"])
        out[kind] = {row: min(values) - (bare_ns if row.startswith("on the fly") else 0.0)
                     for row, values in rows.items()}
    return out


def print_coverage_costs(work: Path, rounds: int) -> dict[str, dict[str, float]] | None:
    costs = coverage_costs(work, rounds)
    if costs is None:
        print("\nunder coverage.py: not installed (pip install coverage): rows skipped")
        return None
    print("\nunder coverage.py's tracer (branch coverage of the function's module), smallest of interleaved rounds:")
    print(f"  {'':<32} {'without':>10} {'with':>10}")
    for row in COVERAGE_ROWS:
        above = " above bare" if row.startswith("on the fly") else ""
        print(f"  {row:<32} {costs['without'][row]:>8.1f} ns {costs['with'][row]:>8.1f} ns{above}")
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--max-number", type=int, default=200_000, help="calls per batch, at most (default 200000)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of at most 20000 calls (a smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per call under valgrind (callgrind) instead of timing: "
                             "the same figures on a busy machine, for the rows with targets")
    parser.add_argument("--switch", action="store_true", help="only the per-test switch's cost")
    parser.add_argument("--coverage", action="store_true", help="only the rows under coverage.py's tracer")
    parser.add_argument("--run-calls", nargs=2, metavar=("LABEL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.switch:
        work = Path(tempfile.mkdtemp(prefix="ti-bench-"))
        try:
            print_switch_costs(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    if args.coverage:
        work = Path(tempfile.mkdtemp(prefix="ti-bench-"))
        try:
            coverage_rows = print_coverage_costs(work, args.rounds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"python": platform.python_version(), "coverage": coverage_rows},
                                                  indent=1))
        return 0 if coverage_rows is not None else 1
    if args.quick:
        args.rounds, args.max_number = 3, 20_000
    if args.run_calls:
        return run_calls(args.run_calls[0], int(args.run_calls[1]))
    if args.instructions:
        return count_instructions()

    from pytest_telemetry_inject import runtime

    work = Path(tempfile.mkdtemp(prefix="ti-bench-"))
    bare, variants, notes = make_variants(work)
    # Calibrate: a batch of ~0.15 s per variant, at most --max-number calls.
    for variant in variants:
        if variant.setup:
            variant.setup()
        for _ in range(2000):
            variant.func(1)
        per_call = time_batch(variant.func, 2000)
        variant.number = int(max(2000, min(args.max_number, 0.15e9 / max(per_call, 1.0))))
    bare_number = args.max_number

    print(f"Python {platform.python_version()} ({platform.python_implementation()}) on {platform.machine()}, "
          f"{os.cpu_count()} CPUs; {args.rounds} interleaved rounds")
    bare_raw: list[float] = []
    # The rounds rotate the order (each variant gets each place in turn), keeping the
    # OpenTelemetry sink and the hand-written span back to back (their ratio is paired by
    # round).
    groups: list[list[Variant]] = []
    for variant in variants:
        if variant.label == "OpenTelemetry SDK span by hand" and groups:
            groups[-1].append(variant)
        else:
            groups.append([variant])
    for round_index in range(args.rounds):
        turn = round_index % len(groups)
        order = [v for group in groups[turn:] + groups[:turn] for v in group]
        for variant in order:
            if variant.setup:
                variant.setup()
            for _ in range(1_300):  # warm the site (its first call makes its span class; a
                variant.func(1)     # sampled row's site decides after 256 calls)
            before = time_batch(bare, bare_number // 2)
            cost = time_batch(variant.func, variant.number)
            after = time_batch(bare, bare_number // 2)
            base = min(before, after)
            bare_raw.append(base)
            variant.raw.append(cost)
            variant.samples.append(cost - base)
    variants[0].setup()  # the default settings again (the floor row's)

    results = {v.label: v for v in variants}
    bare_ns = min(bare_raw)

    def best(label: str) -> float:
        return min(results[label].samples)

    rows = []
    for variant in variants:
        target, verdict = "", ""
        low, median = min(variant.samples), statistics.median(variant.samples)
        if variant.label == "runtime: default aggregator":
            target, verdict = f"<= {TARGET_AGG_NS:.0f} ns", "PASS" if low <= TARGET_AGG_NS else "FAIL"
        elif variant.label == "runtime: disabled":
            target, verdict = f"<= {TARGET_OFF_NS:.0f} ns", "PASS" if low <= TARGET_OFF_NS else "FAIL"
        elif variant.label == "runtime, on the fly: aggregator":
            target, verdict = f"<= {TARGET_FLY_NS:.0f} ns", "PASS" if low <= TARGET_FLY_NS else "FAIL"
        elif variant.label == "runtime, on the fly: disabled":
            target, verdict = f"<= {TARGET_FLY_OFF_NS:.0f} ns", "PASS" if low <= TARGET_FLY_OFF_NS else "FAIL"
        elif variant.label == "runtime: OpenTelemetry sink" and "OpenTelemetry SDK span by hand" in results:
            ratio = paired_ratio(variant, results["OpenTelemetry SDK span by hand"])
            target = f"<= {TARGET_OTEL_RATIO} x by hand (is {ratio:.2f} x)"
            verdict = "PASS" if ratio <= TARGET_OTEL_RATIO else "FAIL"
            verdict += f" (minimum over minimum: {low / best('OpenTelemetry SDK span by hand'):.2f} x)"
            if "by hand, with the 3 code attributes" in results:
                verdict += f" ({low / best('by hand, with the 3 code attributes'):.2f} x by hand with them)"
        elif variant.label == "SDK calls a sink needs, inline" and "OpenTelemetry SDK span by hand" in results:
            variant.note += f" ({low / best('OpenTelemetry SDK span by hand'):.2f} x by hand)"
        rows.append((variant.label, low, median, variant.number, target, verdict, variant.note))

    width = max(len(r[0]) for r in rows)
    print(f"\nbare call: {bare_ns:.1f} ns per call (loop included)\n")
    print(f"{'variant':<{width}}  {'ns/call above bare':>18}  {'median':>9}  {'calls/batch':>11}  "
          f"{'target':<34} result")
    print("-" * (width + 88))
    for label, low, median, number, target, verdict, note in rows:
        print(f"{label:<{width}}  {low:>18.1f}  {median:>9.1f}  {number:>11}  {target:<34} {verdict or note}")
    for note in notes:
        print(note)

    switch_rows = print_switch_costs(work)
    raise_rows = print_raise_costs(work, max(3, args.rounds // 2))
    coverage_rows = print_coverage_costs(work, max(3, args.rounds // 2))
    runtime.flush()
    shutil.rmtree(work, ignore_errors=True)
    pkg_us, core_us = import_time_us()
    print(f"\nimport pytest_telemetry_inject.runtime: {pkg_us / 1000:.2f} ms cumulative "
          f"(_core {core_us / 1000:.2f} ms), best of 5 (python -X importtime)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "python": platform.python_version(), "bare_ns": bare_ns, "import_ms": pkg_us / 1000,
            "rows": [{"variant": r[0], "ns_above_bare_min": r[1], "ns_above_bare_median": r[2], "calls_per_batch": r[3],
                      "target": r[4], "result": r[5]} for r in rows],
            "switch": [{"sites": n, "us_min": low, "us_median": median} for n, low, median in switch_rows],
            "raising_ns": raise_rows, "coverage": coverage_rows},
            indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
