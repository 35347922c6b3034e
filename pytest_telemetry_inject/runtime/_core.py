"""The telemetry runtime: what instrumented code calls. Standard library only.

This one file is both ``pytest_telemetry_inject.runtime`` and, copied verbatim after a marker
line, the vendored module written into projects that commit their telemetry (target
``vendored``, usually ``telemetry_utils.py``). docs/runtime.md is the full reference.

Instrumented modules do ``_telemetry = tracer(__name__)`` once, then per function either
``with _telemetry.span("Qual.name"):`` (functions and coroutines),
``with _telemetry.generator_span("Qual.name"):`` (generators and async generators: the span
lives from the first step to exhaustion or close and never becomes the caller's current
span) or the decorator ``@_telemetry.instrument("Qual.name")``.

Per function (and per test, see ``set_current_test``) it keeps the number of calls, the
total, smallest and largest duration and the exceptions. Optional sinks: JSONL events,
a Chrome trace file (Perfetto, chrome://tracing), OpenTelemetry spans, events kept in
memory for reports. It never raises into user code. Environment variables (read at import;
``configure()`` changes the same settings later):

- ``TELEMETRY_INJECT_DISABLED=1``: every span is a no-op.
- ``TELEMETRY_INJECT_JSONL=PATH``: append one JSON event per call to PATH.
- ``TELEMETRY_INJECT_TRACE=PATH``: write a Chrome trace event file at exit and on ``flush()``.
- ``TELEMETRY_INJECT_OTEL=1`` (or ``0``): OpenTelemetry spans on (off); unset: on when a
  real TracerProvider is set.
- ``TELEMETRY_INJECT_MIN_DURATION=SECONDS``: shorter calls are counted but not emitted.
- ``TELEMETRY_INJECT_SAMPLE_RATE=0..1``: the share of calls emitted as events.
- ``TELEMETRY_INJECT_REPORT=1`` (or ``=PATH``): a table of calls at exit (stderr or PATH).
- ``TELEMETRY_INJECT_SELF_TIME=MS``: sample self time every MS milliseconds (see ``_Sampler``).
- ``TELEMETRY_INJECT_RAISE_FAULTS=1``: an internal fault is raised instead of swallowed (the
  runtime's own tests; see ``internal_faults()``).
- ``TELEMETRY_INJECT_TIMING_EVERY=N`` (16), ``TELEMETRY_INJECT_TIMING_AFTER=N`` (256),
  ``TELEMETRY_INJECT_TIMING_BELOW=SECONDS`` (2e-6): a function with that many timed calls of
  a shorter mean is then timed on one call of N, every call counted (``_decide``); N=1:
  every call timed, exact totals.

How the hot path stays cheap (figures in docs/runtime.md):

- A tracer's class is the current mode's (aggregate only, events, OpenTelemetry, off):
  ``span`` is a plain method there, so a mode costs nothing when it is not on.
- ``span()`` does one dict lookup (name -> site), one allocation and one clock read; the
  span's ``__enter__`` is a C function (a Python ``__enter__`` is called from C by the
  ``with`` statement, which costs a second interpreter frame).
- Durations are appended to a per-site list (``list.append`` is atomic) and folded into
  count/total/min/max in batches under a lock: counting is exact under threads without
  a lock per call.
- Contextvars (parent spans) are only touched by the sinks that record parents.
- Self time is sampled by a thread of its own (``_Sampler``), never computed per call.
"""

from __future__ import annotations

import _thread
import atexit
import contextvars
import functools
import gc
import itertools
import os
import struct
import sys
import threading
from collections import Counter as _Counter
from time import perf_counter as _seconds
from time import perf_counter_ns as _clock
from time import time_ns as _time_ns

# freezegun, while it freezes time, replaces every module attribute that is one of time's
# clocks (it finds them through dir()) with its fake: the clock end() reads was then frozen
# time, against the real start time that start() (a class attribute) read, and durations
# were garbage (dateutil's suite: totals of 10**12 ms). The clocks are left out of this
# module's dir() (PEP 562), so the runtime keeps the real clock, as pytest's own timing does
# by being on freezegun's ignore list.
_UNLISTED = frozenset({"_seconds", "_clock", "_time_ns"})


def __dir__() -> list[str]:
    return [name for name in globals() if name not in _UNLISTED]

# Types, for the type checker only: the runtime imports no more than it needs (not ``typing``:
# a type checker takes any ``TYPE_CHECKING`` name as typing's).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
    from contextvars import Token
    from types import CodeType, FrameType, ModuleType
    from typing import Any, TypedDict, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])
    # A site's aggregate for one test (see _new_stats): count, total ns, min ns, max ns,
    # errors, {exception name: count} or None, self ns, self-time samples, untimed calls,
    # the estimate's bound (ns).
    _Stats = list[Any]
    # A test's aggregate as kept: _Stats, or packed into bytes once the test ended (_pack_finished).
    _Row = _Stats | bytes
    # An event not yet handed to the sinks: site, start (perf_counter_ns), duration (ns),
    # thread id, span id, parent span id, exception type, test.
    _Event = tuple["_Site", int, int, int, "int | None", "int | None", "type | None", "str | None"]

    class _RowKeys(TypedDict):
        module: str
        name: str
        file: str | None
        line: int | None
        count: int
        total_ns: int
        min_ns: int
        max_ns: int
        errors: int
        exceptions: dict[str, int]
        self_ns: int
        self_samples: int

    class SnapshotRow(_RowKeys, total=False):
        """A ``snapshot()`` row: the estimate's keys only on an estimated row
        (``_mark_estimated``), ``test`` only on a per-test row."""

        estimated: bool
        untimed: int
        total_error_ns: int
        test: str | None

    class _EventKeys(TypedDict):
        name: str
        module: str
        start_ns: int
        ts_ns: int
        duration_ns: int
        pid: int
        tid: int
        thread: str | None
        id: int | None
        parent: int | None
        test: str | None

    class EventDict(_EventKeys, total=False):
        """An ``events()`` dict: ``exception`` only when one escaped."""

        exception: str

__all__ = [
    "RUNTIME_VERSION",
    "Tracer",
    "chrome_trace",
    "configure",
    "current_test",
    "dropped_events",
    "events",
    "otlp_counts",
    "flush",
    "format_report",
    "merge_snapshots",
    "no_telemetry",
    "reset",
    "internal_faults",
    "self_time",
    "set_current_test",
    "sink_losses",
    "snapshot",
    "tracer",
]

# CPython's; None elsewhere (sites then by name only)
_getframe: Callable[[int], FrameType] | None = getattr(sys, "_getframe", None)

# 1: the first runtime (aggregate, JSONL). 2: sinks, per-test attribution, forwarding.
RUNTIME_VERSION = 2
# What a vendored copy and the package runtime agree on to forward spans (see _adopt).
_TELEMETRY_INJECT_CORE = 1
_MAIN_NAME = "pytest_telemetry_inject.runtime._core"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# Exceptions that end a call without it failing: a generator closed early, an iterator's
# ``__next__`` / ``__anext__`` saying it is exhausted.
_NOT_ERRORS = (GeneratorExit, StopIteration, StopAsyncIteration)
_NOTHING: dict[Any, Any] = {}  # its .get is the disabled try form's start/end/fail
_DRAIN_AT = 512  # errors kept per site before they are folded into the aggregate
_INF = float("inf")
_NOTHING_PENDING = (0, 0.0, _INF, 0.0)  # a site's pending count, total, low, high
# (3.11) An untimed call of a bound function takes one of its site's slots, from an iterator
# (``_Site.ticks``; ``engine/bytecode.py``, ``_tight_entry``); from 3.12 it counts ``skip`` down.
# A range's iterator: its ``next`` is C and makes no object (small integers), and it is not an
# object the garbage collector tracks (a suite that counts ``gc.get_objects()`` sees none).
_TICKS = sys.version_info[:2] == (3, 11)
_NO_TICKS: Iterator[int] = iter(range(0))  # no slot: the next call is timed
_SLOTS: dict[int, range] = {}  # slots granted at once -> range(slots), whose iterator is the grant
_SPILL_AT = 4096  # events kept before they are handed to the sinks
_EPOCH_NS = _time_ns() - _clock()  # perf_counter_ns() + this = Unix time in ns

# C callables used as ``__enter__`` / ``__exit__`` of no-op spans: the ``with`` statement
# calls them without building a Python frame. ``type.__prepare__`` takes any arguments and
# returns a new, empty (so false: the exception is not swallowed) dict. (Declared as the
# methods they stand for: bound methods, they take no self.)
_ENTER: Callable[[object], None] = {}.clear  # type: ignore[assignment]
_EXIT_NOOP: Callable[..., None] = type.__prepare__  # type: ignore[assignment]

_lock = threading.Lock()  # folds buffers, spills events, snapshots; replaced after fork
# The aggregate's hot paths count a call with a few attribute updates and no lock: with a
# GIL, no other thread runs between them (the interpreter switches threads only at calls
# and backward jumps). A free-threaded build has no such guarantee: there every count goes
# through _account, under _acc_lock, which folds take too.
_FREE_THREADED = not getattr(sys, "_is_gil_enabled", lambda: True)()
_acc_lock = threading.Lock()
_sites: dict[tuple[str, str], _Site] = {}  # (module, name) -> _Site
_recent: list[_Site] = []  # sites with calls or errors counted since their last fold (_drain_recent)
_rows_now: list[_Site] = []  # sites with an aggregate for the current test (_pack_finished)
_tracers: dict[str, Tracer] = {}  # module -> Tracer
_events: list[_Event] = []  # event tuples not yet handed to the sinks
_thread_names: dict[int, str] = {}  # thread ident -> name, for events
_current: contextvars.ContextVar[int | None] = contextvars.ContextVar("telemetry_inject_span", default=None)
_cv_get = _current.get
_cv_set = _current.set
_cv_reset = _current.reset
_next_id = itertools.count(1).__next__
_get_ident = threading.get_ident
# CPython 3.11 and older may run the cyclic GC inside ContextVar.set (a HAMT node
# allocation starts it); a generator or coroutine it finalises runs its ``finally``, and
# a span's exit there (ContextVar.reset, or set) swaps the context's HAMT that the outer
# set is still copying: a use-after-free, a segfault at ``_cv_set`` (python/cpython
# gh-148891; reproduced with a suspended generator holding a span in a reference cycle).
# So a span closed by GeneratorExit while this thread collects leaves the variable alone
# (later spans of that context may name the dead span as parent). 3.12 runs the GC only
# between bytecodes: nothing to do there.
_gc_thread: list[int | None] = [None]  # the thread collecting now, or None
# The exception being handled (sys.exception, from 3.11: no tuple made, as exc_info makes).
_handled: Callable[[], BaseException | None] = getattr(sys, "exception", None) or (lambda: sys.exc_info()[1])
if sys.version_info < (3, 12):
    def _gc_watch(phase: str, info: dict[str, Any]) -> None:
        _gc_thread[0] = _get_ident() if phase == "start" else None

    gc.callbacks.append(_gc_watch)
_pid = os.getpid()

# Settings the hot path reads (module globals: the cheapest lookup there is).
_mode = "agg"  # "off" | "agg" | "ev" (events) | "otel"
_min_ns = 0
_rate = 1.0
# random.random, imported when a sample rate is set (read only then: declared set)
_random: Callable[[], float] = None  # type: ignore[assignment]
_ev_on = False  # some event sink is on
_parents = False  # some event sink records parent ids (JSONL, kept events)
_test: str | None = None  # the current test (set_current_test)
_collecting = False  # this runtime is the collector vendored copies forward to
_lead: ModuleType | None = None  # (vendored copies) the runtime this copy forwards to
_copies: list[ModuleType] = []  # (collector) the vendored copies forwarding to it

# OpenTelemetry, bound when the sink is on (never imported otherwise).
# A namespace of the functions used, or None (read by the spans of the OpenTelemetry mode
# only, which it is bound for: declared bound).
_otel: _OtelBridge = None  # type: ignore[assignment]


class _Config:
    """The settings (``configure()`` and the environment)."""

    __slots__ = ("disabled", "min_duration", "sample_rate", "jsonl", "trace", "otel", "otel_provider",
                 "report", "keep_events", "max_events", "collector", "otlp", "self_time", "raise_faults",
                 "timing_every", "timing_after", "timing_below")

    def __init__(self) -> None:
        self.disabled = False
        self.min_duration = 0.0
        self.sample_rate = 1.0
        self.jsonl = ""
        self.trace = ""
        self.otel: bool | str = "auto"
        self.otel_provider: Any = None  # a TracerProvider; None: the global one
        self.report = ""
        self.keep_events = False
        self.max_events = 200_000
        self.collector = False
        self.otlp: dict[str, Any] | None = None  # the OTLP sink's settings (runtime/_otlp.py), or None
        self.self_time = 0.0  # seconds between self-time samples; 0: not sampled
        self.raise_faults = False  # raise internal faults instead of swallowing them (its own tests)
        # Hot, cheap sites timed on one call of ``timing_every`` (1: every call timed, exact
        # totals) once they had ``timing_after`` timed calls with a mean below
        # ``timing_below`` seconds (see _decide).
        self.timing_every = 16
        self.timing_after = 256
        self.timing_below = 2e-6

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


_config = _Config()

# Internal faults. The runtime never raises into user code: where something of its own (or
# of the OpenTelemetry SDK it calls) fails, the call goes on. But a fault swallowed without
# a trace is data lost without a word: each is counted by where it happened, with the first
# exception's text, reported by ``internal_faults()``, the pytest plugin's summary and a
# line on stderr at exit; under the runtime's own tests (``raise_faults``) it is raised.
_faults: dict[str, list[Any]] = {}  # where -> [count, "Type: message" of the first]


def _fault(where: str, reraise: bool = True) -> None:
    """Count the exception being handled as an internal fault at ``where``; raise it again
    when ``raise_faults`` is on (and ``reraise``: not in a thread of the runtime's own or
    at exit, where nobody would see it). Call it only from an ``except`` block."""
    try:
        entry = _faults.get(where)
        if entry is None:
            kind, error = sys.exc_info()[:2]
            _faults[where] = [1, _describe(kind, error) if kind is not None else ""]
        else:
            entry[0] += 1
    except Exception:
        pass
    if reraise and _config.raise_faults:
        raise  # noqa: PLE0704  (the exception being handled by the caller)


def internal_faults() -> dict[str, dict[str, Any]]:
    """The faults the runtime swallowed since the last ``reset()``: ``{where: {"count": n,
    "first": "Type: message"}}``, in the order they first happened (empty when none)."""
    return {where: {"count": entry[0], "first": entry[1]} for where, entry in list(_faults.items())}


# -- sites and their aggregate ---------------------------------------------------------------


class _Site:
    """One instrumented function (module + qualname): its pending durations and errors, and
    its aggregate per test (``None``: outside any test)."""

    __slots__ = ("module", "name", "file", "line", "n", "total", "low", "high", "errs", "stats", "ot", "_attrs",
                 "left", "given", "carry", "every", "sm", "ss", "sq", "seen", "seen_s", "rn", "rs", "shown",
                 "skip", "granted", "off", "rw", "due", "start", "ticks", "limit")
    # Set by _unsample (see there).
    left: int
    given: int
    carry: int
    skip: int
    granted: int
    every: int
    sm: int
    ss: float
    sq: float
    seen: int
    seen_s: float
    rn: int
    rs: float
    rw: float
    due: int

    def __init__(self, module: str, name: str, file: str | None, line: int | None) -> None:
        self.module = module
        self.name = name
        self.file = file
        self.line = line
        # Calls not yet folded: count, total, shortest and longest duration, in seconds
        # (floats: perf_counter() and float arithmetic are the interpreter's cheapest).
        self.n, self.total, self.low, self.high = _NOTHING_PENDING
        self.errs: list[type] = []  # exception types not yet folded
        # test -> [count, total, min, max, errors, {exception name: count} or None,
        #          sampled self time in ns, self-time samples, ...] (see _new_stats), packed
        #          into bytes once the test ended (see _pack_finished)
        self.stats: dict[str | None, _Row] = {}
        self.ot = None  # the module's OpenTelemetry tracer, when that sink is on
        self._attrs: dict[str, Any] | None = None
        # In snapshot() before any call (a site bound at import, ``bind_site``, is not).
        self.shown = True
        # What a bound entry calls for its start time (``SITE.start()``,
        # ``engine/compiler.py`` ``_skipping``; on 3.11 ``engine/bytecode.py`` ``_tight_entry``):
        # its module's tracer's ``start``, kept by ``_clock_sites`` on each change of mode
        # (``perf_counter`` in the aggregate mode). A slot: its load specialises, where
        # ``_telemetry.start`` (a C function in the tracer's class) does not on 3.11 or 3.12.
        self.start: Callable[[], object] = _seconds
        # (3.11) What the exit written into a bound function (``engine/bytecode.py``,
        # ``_inline_exits``) compares the call's state with: infinite while ``start`` is
        # the aggregate mode's clock (its states are floats), minus infinity in the other
        # modes, whose calls then go to their ``end_site``. Set with ``start`` (``_set_start``).
        self.limit = _INF
        # (3.11) The untimed calls granted and not made yet: an iterator that the entry
        # takes one from per call (``_end_site_agg``'s grant, ``_take``).
        self.ticks: Iterator[int] = _NO_TICKS
        self.off = None  # the state of a call the entry left untimed (see _end_site_agg)
        _unsample(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # A site bound into a function's code (bind_site) travels with it when the code is
        # pickled by value (cloudpickle): unpickled, it is the site of that module and name
        # in the receiving process, not a copy that counts for no one.
        return (bind_site, (self.module, self.name, self.file, self.line))

    def otel_attributes(self) -> dict[str, Any]:
        """OpenTelemetry code attributes, by the current semantic conventions (``code.function.name``
        fully qualified, ``code.file.path``, ``code.line.number``: the names ``code.function``,
        ``code.filepath`` and ``code.lineno`` are deprecated), computed once per site."""
        if self._attrs is None:
            attrs: dict[str, Any] = {"code.function.name": f"{self.module}.{self.name}"}
            if self.file:
                attrs["code.file.path"] = self.file
            if self.line:
                attrs["code.line.number"] = self.line
            self._attrs = attrs
        return self._attrs


def _exception_name(kind: type) -> str:
    """The exception's class name, as version 1 wrote it (``OutOfStock``, ``Outer.Error``)."""
    return getattr(kind, "__qualname__", None) or getattr(kind, "__name__", None) or repr(kind)


def _account(site: _Site, seconds: float) -> None:
    """Count one call of ``seconds`` (the aggregate's hot paths inline this)."""
    site.n += 1
    site.total += seconds
    if seconds > site.high:
        site.high = seconds
    if seconds < site.low:
        site.low = seconds
        if site.n == 1:  # the first call since the last fold (low was infinite then)
            _recent.append(site)


if _FREE_THREADED:
    _account_unlocked = _account

    def _account(site: _Site, seconds: float) -> None:  # noqa: F811
        with _acc_lock:
            _account_unlocked(site, seconds)


def _error(site: _Site, kind: type) -> None:
    """Count one error (after its call was counted, or before, by the try form's fail())."""
    errs = site.errs
    errs.append(kind)
    if len(errs) == 1:  # (an error counted before its call: the try form's fail())
        _recent.append(site)
    if len(errs) > _DRAIN_AT:
        _drain_soon(site)


def _take(site: _Site) -> tuple[int, float, float, float, int]:
    """The site's pending timed count, total, low and high and its untimed calls, reset in
    one step: no call and no backward jump in between, so with a GIL no call of another
    thread is counted half, and no lock is taken (a ``with`` block on one was a seventh of
    what a test switch cost; a free-threaded build takes ``_acc_lock``). A sampled site's
    untimed calls are the slots handed out (``given``) less those not used yet (``left -
    1``), plus those kept by a change of its sampling since the last fold (``carry``, see
    ``_retime``); it starts again with the next call timed (``left`` 1), which appends it to
    ``_recent`` (its minimum is infinite then), so a test switch never misses its untimed
    calls. A countdown to the decision (``left`` below 0) goes on across folds. A bound
    site's entry made ``granted`` less ``skip`` (from 3.12) or less the slots left in
    ``ticks`` (3.11): those are taken away in the same step, and counted after it (no entry
    can take one of them then)."""
    left = site.left
    ticks = site.ticks
    site.ticks = _NO_TICKS
    n, total, low, high = site.n, site.total, site.low, site.high
    untimed = (site.given - left + 1 if left > 0 else 0) + site.carry + site.granted - site.skip
    site.n, site.total, site.low, site.high = _NOTHING_PENDING
    site.given = site.carry = site.granted = site.skip = 0
    site.left = 1 if left > 0 else left
    if ticks is not _NO_TICKS:
        untimed -= ticks.__length_hint__()  # type: ignore[attr-defined]
    return n, total, low, high, untimed


if _FREE_THREADED:  # (there counts are made under _acc_lock, and so is their take)
    _take_unlocked = _take

    def _take(site: _Site) -> tuple[int, float, float, float, int]:  # noqa: F811
        with _acc_lock:
            return _take_unlocked(site)


def _new_stats() -> _Stats:
    """A site's aggregate for one test: count, total ns, min ns, max ns, errors, exception
    names (a dict, or None before the first), sampled self ns, self-time samples, calls
    counted but not timed (their time is estimated, see ``_estimate``), and the bound of
    that estimate (ns, about 95%)."""
    return [0, 0, 0, 0, 0, None, 0, 0, 0, 0.0]


def _open_row(site: _Site, packed: bytes | None) -> _Stats:
    """The site's aggregate for the current test, made (or unpacked: the same test run
    again, by a plugin that reruns failures) to be added to. (``_drain`` makes a new one
    inline.)"""
    stats = site.stats[_test] = _new_stats() if packed is None else _unpack(packed)
    site.shown = True
    if _test is not None:
        _rows_now.append(site)
    return stats


# A test's aggregates are lists while it runs (added to at each fold). When it ends they are
# final and are packed into bytes: a list of ten items is an object the garbage collector
# tracks, and a suite makes one per function a test calls (cachetools: 6,500; a large
# project: hundreds of thousands). Each counts towards the collector's thresholds, so they
# set off collections the project's own suite would not make, and each full collection walks
# them all; bytes are not tracked, and take half the memory. Only aggregates without
# exceptions (the dict of their names stays a list's) and of a test (not of the calls outside
# any, which go on being added to).
# count, total, min, max, errors, 0 (no exception names), self ns, self samples, untimed; bound:
# unpacked, a tuple that reads as the list did (``_stats_of``).
_PACKED = struct.Struct("=9qd")


def _pack_finished(test: str) -> None:
    """Pack the finished test's aggregates (the caller holds ``_lock``, after the fold)."""
    pack = _PACKED.pack
    for site in _rows_now:
        stats = site.stats.get(test)
        if type(stats) is list:
            count, total, low, high, errors, kinds, self_ns, samples, untimed, bound = stats
            if kinds is None:
                site.stats[test] = pack(count, total, low, high, errors, 0, self_ns, samples, untimed, bound)
    _rows_now.clear()


def _unpack(packed: bytes) -> _Stats:
    """A packed aggregate to add to again (a list)."""
    stats = list(_PACKED.unpack(packed))
    stats[5] = None
    return stats


def _stats_of(row: _Row) -> Sequence[Any]:
    """An aggregate to read, packed or not (packed: the tuple ``struct`` gives, whose
    exception slot is 0, which reads as no names)."""
    return row if isinstance(row, list) else _PACKED.unpack(row)


def _drain(site: _Site) -> None:
    """Fold the site's pending calls and errors into the current test's aggregate.
    The caller holds ``_lock``. Counting goes on meanwhile: the pending figures are read
    and reset in one step (``_take``), and of the errors only the first ``m``, read here,
    are removed."""
    n, total, low, high, untimed = _take(site)
    errs = site.errs
    m = len(errs)
    if not n and not m and not untimed:
        return
    stats = site.stats.get(_test)
    if stats is None:
        stats = site.stats[_test] = _new_stats()
        site.shown = True
        if _test is not None:
            _rows_now.append(site)
    elif not isinstance(stats, list):
        stats = _open_row(site, stats)
    if n:
        low_ns, high_ns = round(low * 1e9), round(high * 1e9)  # (_ns, inlined: once per site a test)
        if stats[0] == stats[8] or low_ns < stats[2]:  # (no timed call in it yet: its min is 0)
            stats[2] = low_ns
        if high_ns > stats[3]:
            stats[3] = high_ns
        stats[0] += n
        stats[1] += round(total * 1e9)
        site.seen += n
        site.seen_s += total
        if site.every:
            _redecide(site, n, total)
    if untimed:
        guess, bound = _estimate(site, untimed)
        stats[0] += untimed
        stats[1] += round(guess * 1e9)
        stats[8] += untimed
        stats[9] += bound * 1e9
    if m:
        chunk = errs[:m]
        del errs[:m]
        if errs:  # errors counted meanwhile: the next fold takes them
            _recent.append(site)
        kinds = stats[5] if stats[5] is not None else {}
        for kind, times in _Counter(chunk).items():  # (counted in C: one name per class)
            key = _exception_name(kind)
            kinds[key] = kinds.get(key, 0) + times
        stats[4] += m
        stats[5] = kinds


def _drain_soon(site: _Site) -> None:
    """From a hot path (too many errors pending): fold unless another thread (or this
    one, re-entered from a finalizer) is already folding; the errors then wait."""
    lock = _lock
    if lock.acquire(False):
        try:
            _drain(site)
        finally:
            lock.release()
        _maybe_otel()


def _drain_all() -> None:
    """Fold every site's pending calls (snapshots, flush, configure)."""
    global _recent
    _recent = []
    for site in list(_sites.values()):
        if site.n or site.errs or site.given or site.carry or site.granted:
            _drain(site)


def _drain_recent() -> None:
    """Fold the sites called since the last fold, and no other: the per-test switch costs
    what the test called, not what the project has. A site joins ``_recent`` on its first
    call after a fold, where its minimum (infinite after the fold) is always beaten: a
    branch the hot path takes anyway, so counting a call costs nothing more. With a GIL no
    thread switch happens between a call's count and that append (no call, no backward
    jump in between), nor inside the swap below; a free-threaded build counts under
    ``_acc_lock``. A site folded twice is no harm (nothing pending: nothing done)."""
    global _recent
    batch, _recent = _recent, []
    for site in batch:
        _drain(site)


if _FREE_THREADED:  # (there neither the appends nor the swap are atomic: every site is looked at)
    _drain_recent = _drain_all  # noqa: F811


# -- timing a sample of a hot site's calls ------------------------------------------------------
#
# Two clock reads and the float arithmetic of a duration are most of what the try form's
# end() costs (docs/runtime.md, Performance). A site called many times (``timing_after``
# timed calls) whose mean duration is tiny (below ``timing_below``) is then timed on one
# call of every ``timing_every``: the others are counted exactly by a countdown of small
# integers and return before the clock is read. Its totals become estimates: the timed
# calls' own durations plus the untimed calls at the mean of the calls timed since it was
# sampled, with a bound (``_estimate``); counts, errors and the per-test call map stay
# exact. Which calls are timed is deterministic: the first after each fold, then every
# ``timing_every``-th. Not on a free-threaded build (there every call is counted under a
# lock anyway) and only in the aggregate mode's try form (the ``with`` form, the decorator
# and the event modes time every call).

_EVERY = 16  # timing_every: time one call of this many on a sampled site (1: every call)
_AFTER = 256  # timing_after: timed calls of a site before it may be sampled
_WINDOW = 4  # a decided site decides again once its calls folded since make this many x timing_after
_BELOW = 2e-6  # timing_below: seconds; only sites whose mean duration is shorter
# A site still cheap after this many calls timed while sampled (its estimate's mean rests on
# them) has its period made 4 times longer at each window that stays cheap, up to
# ``_GROW_MAX`` times ``timing_every``: what a sampled call still costs is mostly its share
# of the timed calls' (one of 16: ~130 instructions a call; one of 256: ~8), and the bound
# says what the fewer timed calls leave uncertain (``_redecide``).
_GROW_AFTER = 1024
_GROW_MAX = 16
# Timed calls of a sampled site that make a window (``_redecide``), at one of
# ``timing_every``: between two looks of its hot path (``_look``, ``_due``).
_LOOK_EVERY = -(-_WINDOW * _AFTER // _EVERY)
_NEVER = sys.maxsize
# A site whose window of calls came faster than this many a second (wall clock, fold to
# fold) is sampled however long its calls take: timing a call costs ~150 ns more than
# counting it, 0.75% of a core at this rate, and a recursive function (a parser's) has a
# long mean, its callees' time included, and as many calls as they (``_redecide``).
_BUSY = 50_000


def _unsample(site: _Site) -> None:
    """The site back to timing every call, undecided, its sampling figures forgotten.
    ``left``: above 0, calls until the next timed one (1: the next); 0: every call timed
    (decided, or sampling off); below 0: timed, ``-left`` calls to go before the decision
    (``_hot``), or, decided to time every call, before its one look at the window after
    the decision (``_decide``, ``_look``): so a site decided to be timed on every call, the
    common case, pays one test of ``left`` per call and nothing more after that.
    ``given``: untimed slots handed out since the last fold; ``every``: 0 undecided, -1
    decided to time every call, else the sampling period; ``sm``, ``ss``, ``sq``: count,
    sum and sum of squares (seconds) of the calls timed while sampled; ``seen``, ``seen_s``: timed calls folded and their seconds;
    ``due``: the ``sm`` at which a sampled site's hot path looks at its window (``_due``)."""
    site.given = site.carry = site.every = site.sm = site.seen = site.rn = site.skip = site.granted = 0
    site.ticks = _NO_TICKS
    site.left = -_AFTER if _EVERY > 1 and not _FREE_THREADED else 0
    site.ss = site.sq = site.seen_s = site.rs = site.rw = 0.0
    site.due = _NEVER


def _due(site: _Site) -> None:
    """Set when the site's hot path looks at its window next (``_look``): on a sampled site
    whose period can still grow, once ``_GROW_AFTER`` of its calls were timed while sampled
    (a look before would decide nothing new), then at each window; never at its longest
    period, nor on a site not sampled: there the test switch's folds decide again, as they
    always did."""
    every = site.every
    site.due = _NEVER if every <= 0 or every >= _EVERY * _GROW_MAX else max(_GROW_AFTER, site.sm + _LOOK_EVERY)


def _decide(site: _Site, count: int, seconds: float) -> None:
    """Sample the site's timing from now on when its ``count`` timed calls took ``seconds``
    in all, short enough on average (the next call is timed and starts the first block:
    ``left`` 1); or time every call of it from now on, and look again once a window of those
    calls is counted down (``left`` below 0, then 0; ``_look``): a function's first calls
    are often its slowest (caches, imports, the interpreter's warm-up)."""
    if site.every or _EVERY < 2 or _FREE_THREADED or not count:
        if site.left < 0:  # (no call between the test and the write: see _retime)
            site.left = 0
        return
    # (the window of the next decision, ``_redecide``, starts after this call: the calls
    # pending now, counted before the decision, are left out of it)
    site.rn, site.rs, site.rw = -site.n, -site.total, _seconds()
    if seconds < _BELOW * count:
        site.every = _EVERY
        site.left = 1
        _due(site)
    else:  # timed on every call: one window more of them, then a look (_hot)
        site.every = -1
        site.left = -_WINDOW * _AFTER


def _redecide(site: _Site, n: int, seconds: float) -> None:
    """(From a fold of a decided site's ``n`` timed calls of ``seconds``) decide again, both
    ways, once the calls folded since the last decision make a window of ``_WINDOW`` times
    ``timing_after`` calls (a sampled site's timed calls standing for ``timing_every`` calls
    each; by default 1,024 calls, 64 of them timed: fewer would let one slow call, a garbage
    collection inside it, turn a cheap site back to timing every call): the first
    decision saw a function's first calls, often its slowest (caches, imports, the
    interpreter's warm-up), and a cheap function can turn slow (a lock under contention).
    A sampled site that stays cheap, once ``_GROW_AFTER`` of its calls were timed while
    sampled, gets a period 4 times longer, up to ``_GROW_MAX`` times ``timing_every``; one
    that turns slow starts again from timing every call, and from ``timing_every`` when it
    is cheap again. A site whose window's calls came faster than ``_BUSY`` a second is
    **busy**: sampled however long its calls (from ``timing_every``, and it grows only while
    cheap). At folds; and, within a long test, the hot path's looks (``_look``) sample a site
    decided to be timed on every call and lengthen a cheap one's period. ``rn``, ``rs``: the
    window so far, folded (the pending calls are ``n`` and ``total``; ``rn`` below 0 leaves
    pending calls before the window out); ``rw``: when it began (``perf_counter``; 0: not
    known)."""
    site.rn += n
    site.rs += seconds
    every = site.every
    judged = _judge(site, site.rn, site.rs, every)
    if judged is None:
        return
    cheap, busy, now = judged
    site.rn, site.rs, site.rw = 0, 0.0, now
    if every > 0 and not (cheap or busy):  # sampled, now slow and unhurried: every call timed again
        _retime(site, -1, 0)
    elif every < 0 and (cheap or busy) and _EVERY > 1:  # timed on every call, now cheap or busy: sampled
        site.sm, site.ss, site.sq = 0, 0.0, 0.0
        _retime(site, _EVERY, 1)
    else:
        _grow(site, every, cheap)
    _due(site)


def _judge(site: _Site, count: int, seconds: float, every: int) -> tuple[bool, bool, float] | None:
    """The window of ``count`` timed calls of ``seconds`` (of a site sampling at ``every``):
    None while it is not complete, else whether it is cheap, whether it is busy, and now
    (the next window's start). A window of a site sampled at a grown period is as many
    timed calls as at the first: a window of fewer would let one slow call turn the site
    back to timing every call."""
    if count * (_EVERY if every > _EVERY else max(every, 1)) < _WINDOW * _AFTER:
        return None
    now = _seconds()
    return seconds < _BELOW * count, site.rw > 0.0 and count * max(every, 1) > _BUSY * (now - site.rw), now


def _grow(site: _Site, every: int, cheap: bool) -> bool:
    """Make a sampled site's period 4 times longer (from its next timed call, as
    ``_set_timing`` does) when its window is cheap and ``_GROW_AFTER`` of its calls were
    timed while sampled, up to ``_GROW_MAX`` times ``timing_every``; whether it did."""
    if not (cheap and 0 < every < _EVERY * _GROW_MAX and site.sm >= _GROW_AFTER):
        return False
    site.every = min(every * 4, _EVERY * _GROW_MAX)
    return True


def _retime(site: _Site, every: int, left: int) -> None:
    """Give a site a new sampling period and countdown (a fold or ``configure``, holding
    ``_lock``) while other threads go on counting its calls: the untimed calls it counted
    since the last fold (slots handed out less those left, and what ``_withdraw`` takes of a
    bound site's) move to ``carry``, which the next fold takes (``_take``). Each countdown
    is read and written in one step, with no call in between: with a GIL no end() of
    another thread runs inside it, so none of its countdown is lost
    (setting ``left`` alone would drop the calls counted since the fold: the race tests of
    test_semantics.py lost some hundreds of 36,000 calls that way)."""
    old = site.left
    site.carry += site.given - old + 1 if old > 0 else 0
    site.given = 0
    site.every, site.left = every, left
    _withdraw(site)
    _due(site)


def _withdraw(site: _Site) -> None:
    """Stop a bound site's entry leaving calls untimed (``skip`` 0, no slot left in
    ``ticks``), its untimed calls so far (granted less not used) moved to ``carry``: one
    step, no call in between (on 3.11 after the slots left are counted, ``_unused``). After
    a change of sampling (``_retime``: after it, so that an end() of another thread grants
    by the new period) and of mode (``_apply``)."""
    unused, ticks = _unused(site)
    site.ticks = _NO_TICKS
    site.carry += site.granted - site.skip - unused
    site.granted = site.skip = 0
    _settle(site, ticks, unused)


def _slots(slots: int) -> range:
    """``range(slots)``, kept per number of slots: a timed call's grant is its iterator."""
    grant = _SLOTS[slots] = range(slots)
    return grant


def _grant(site: _Site, new: Iterator[int], slots: int) -> None:
    """(3.11) ``new`` (``slots`` slots) in the place of the site's ``ticks``, ``granted``
    topped up by them less the slots left in the one it replaces: ``_end_site_agg``'s grant
    where another thread replaced ``ticks`` while it counted them."""
    unused, ticks = _unused(site)
    site.ticks = new
    site.granted += slots - unused
    _settle(site, ticks, unused)


def _unused(site: _Site) -> tuple[int, Iterator[int]]:
    """The slots left in the site's ``ticks``, and that iterator, read so that no call comes
    between the read of ``site.ticks`` that returns it and the caller's next statement:
    the caller replaces it there, in one step with its count. (Other threads' calls may
    still take slots between the count and that step: ``_settle`` adds them.)"""
    while True:
        ticks = site.ticks
        unused = ticks.__length_hint__() if ticks is not _NO_TICKS else 0  # type: ignore[attr-defined]
        if site.ticks is ticks:  # (no other thread replaced it during the count)
            return unused, ticks


def _settle(site: _Site, ticks: Iterator[int], unused: int) -> None:
    """Count the slots of ``ticks`` that calls took after ``_unused`` counted ``unused`` and
    before the caller replaced it (no entry can take one now): in ``granted`` they are
    untimed calls made. Until this step they are missing from it; a fold in between leaves
    them to the next one."""
    if unused:
        taken = unused - ticks.__length_hint__()  # type: ignore[attr-defined]
        if taken:
            site.granted += taken


def _hot(site: _Site) -> None:
    """(From end()) on the ``timing_after``-th timed call of an undecided site, decide on
    the mean of its timed calls so far, folded or pending (``_decide``); on a decided site's
    window, look at it (``_look``)."""
    try:
        if site.every:
            _look(site)
        else:
            _decide(site, site.seen + site.n, site.seen_s + site.total)
    except Exception:  # (counted, never raised: end() has counted this call already)
        _fault("timing sample", reraise=False)


def _look(site: _Site) -> None:
    """Decide again from the hot path, on the window so far (folded and pending), where a
    fold would come too late: folds come at test switches, and a site decided in the middle
    of a long test kept its decision until the test ended. markupsafe's ``escape``, slow in
    its first 256 calls (2.2 µs), then cheap, was timed on all 80,000 calls of its leak
    test; cachetools' ``LFUCache.__getitem__`` kept its first period (one call of 16) for
    500,000 calls of one test. Two looks, both ways to fewer timed calls: a site decided to
    be timed on every call, one window after the decision (counted down by ``left``), is
    sampled if the window is cheap or busy (nothing of it is untimed: no count to carry);
    a sampled site whose period can still grow (``due``) gets a longer one if the window is
    cheap. A window that does neither goes on, and the next fold decides on it: turning
    back to timing every call stays with the folds (``_redecide``). No
    fold: a fold would make the test's aggregate in the middle of the test, an object the
    garbage collector tracks, which a suite counting ``gc.get_objects()`` (markupsafe's
    leak test) sees appear; here only floats are made."""
    every = site.every
    judged = _judge(site, site.rn + site.n, site.rs + site.total, every)
    if judged is not None:
        cheap, busy, now = judged
        if every < 0 and _EVERY > 1 and (cheap or busy):  # sampled, as _decide samples
            site.sm, site.ss, site.sq = 0, 0.0, 0.0
            site.every = _EVERY
            site.left = 1
            site.rn, site.rs, site.rw = -site.n, -site.total, now  # (a new window)
        elif _grow(site, every, cheap):
            site.rn, site.rs, site.rw = -site.n, -site.total, now
        # (else the window goes on, for the next fold to decide on: _redecide)
    _due(site)


def _estimate(site: _Site, untimed: int) -> tuple[float, float]:
    """Seconds to count for ``untimed`` calls, and the bound of that figure: the mean of the
    calls timed while the site was sampled, and 1.96 standard deviations of the sum of
    ``untimed`` durations estimated by that mean (``untimed`` draws, plus the mean's own
    error: sd * sqrt(untimed + untimed**2 / timed)), about 95% when the untimed calls are
    like the timed ones. With fewer than two timed calls: the whole estimate."""
    sm = site.sm
    if sm < 1:
        mean = site.seen_s / site.seen if site.seen else 0.0
        return untimed * mean, untimed * mean
    mean = site.ss / sm
    guess = untimed * mean
    if sm < 2:
        return guess, guess
    sd = max(0.0, site.sq / sm - mean * mean) ** 0.5
    return guess, 1.96 * sd * (untimed + untimed * untimed / sm) ** 0.5


def _set_timing(every: int, after: int, below: float) -> None:
    """Apply the timing settings (``configure``, holding ``_lock`` after a fold of every
    site): sampled sites take the new period, or time every call again."""
    global _EVERY, _AFTER, _BELOW, _LOOK_EVERY
    _EVERY, _AFTER, _BELOW = max(1, every), max(1, after), max(0.0, below)
    _LOOK_EVERY = -(-_WINDOW * _AFTER // _EVERY)
    for site in list(_sites.values()):
        if _EVERY < 2 or _FREE_THREADED:
            _retime(site, 0, 0)
        elif site.every > 0:
            site.every = _EVERY  # (from its next timed call)
            _due(site)
        elif not site.every:
            site.left = -_AFTER  # undecided: the countdown starts again

# -- self time: sampled ------------------------------------------------------------------------
#
# A function's self time is its total time less the time of the instrumented calls it made.
# Measured per call it would need bookkeeping at every start and end (a per-thread stack:
# about 60% more instructions on the aggregate's hot path, which is the figure the runtime
# is judged by), and it would still charge the runtime's own cost around each nested call to
# the caller. So it is sampled: a thread of the runtime's own wakes every ``self_time``
# seconds, looks at every other thread's stack and charges the time since its last look to
# the innermost instrumented function there; when the innermost frame that is either an
# instrumented function or the runtime's own code is the runtime's, the time is the tool's
# and charged to nobody. Code the instrumented function calls that is not instrumented
# (the standard library, C calls) is its self time, as in a profiler. The thread starts
# through ``_thread`` (``threading.enumerate()`` and ``active_count()`` do not list it, and
# ``threading.settrace`` hooks do not trace it), holds no frame between samples and stops at
# exit. Figures (what a sample costs, how close the estimate comes): docs/reports.md.

_UNKNOWN = object()
_TOOL = object()  # a code object of the runtime itself
# The package runtime's folder holds only runtime code (its sinks, the reports); a vendored
# copy's folder is the project's, where only the copy itself is the tool's.
_HERE = os.path.abspath(globals().get("__file__") or "<runtime>")
_RUNTIME_DIR = os.path.dirname(_HERE) if __name__ == _MAIN_NAME else None
_MAX_WALK = 400  # frames looked at per thread and sample; deeper stacks are not charged
# CPython 3.11 makes a frame's Python object lazily (``f_back``, ``sys._current_frames()``)
# and may run the cyclic GC inside that allocation, before the new object is tied to its
# frame. A finalizer the collection runs can hand the GIL to the frame's own thread, which
# returns from the frame meanwhile; the object is then tied to freed memory and reading it
# crashes the interpreter (what sampling profilers on 3.11 hit; reproduced here with a
# finalizer that sleeps while the sampler walks a deep stack). So on 3.11 the sampler makes
# room first: when the next allocations could start a collection, it runs that (young)
# collection itself, where no frame is half made. 3.12 runs the GC only between bytecodes.
_GC_IN_FRAME_ALLOC = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
_gc_count = gc.get_count
_gc_threshold = gc.get_threshold
_gc_enabled = gc.isenabled
_gc_collect = gc.collect


def _gc_room(need: int) -> int:
    """(CPython 3.11) Make sure ``need`` more allocations start no collection; return the
    young generation's count at which the next one could (``need`` being the margin), or a
    count never reached when the GC is off."""
    threshold = _gc_threshold()[0]
    if not threshold or not _gc_enabled():
        return 1 << 62
    if _gc_count()[0] + need + 2 >= threshold:  # (+2: the tuples these calls return)
        _gc_collect(0)
    return threshold - 3
_sampler: _Sampler | None = None  # the running _Sampler, or None
# samples taken, samples charged to a function, samples in the runtime, ns in the runtime
_self_counts = [0, 0, 0, 0]


class _Sampler:
    """The self-time sampler's thread and what it knows: code object -> site (or ``_TOOL``,
    or None for code that is neither), and (file, first line) -> site for the sites made so
    far (``_site`` records where each function's code starts)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.codes: dict[CodeType, Any] = {}  # code object -> _Site, _TOOL or None
        self.entries: dict[CodeType, int] = {}  # code object -> the offset of its entry instruction (_entry_offset)
        self.where: dict[tuple[str, int], _Site] = {}
        self.seen = 0  # sites indexed in ``where``
        self.ident: int | None = None
        self.threads = 1  # threads seen by the last sample
        self.tool_files = {os.path.normcase(_HERE)}
        self.stop = _thread.allocate_lock()
        self.stop.acquire()  # released by close(): the sleep ends early
        self.done = _thread.allocate_lock()
        self.done.acquire()  # released when the thread has left its loop
        _thread.start_new_thread(self._run, ())

    def close(self, wait: float = 1.0) -> None:
        try:
            self.stop.release()
        except RuntimeError:  # closed already
            return
        self.done.acquire(True, wait)

    def _run(self) -> None:
        try:
            sys.settrace(None)
            sys.setprofile(None)
            self.ident = _get_ident()
            stop = self.stop
            last = _clock()
            while not stop.acquire(True, self.interval):
                now = _clock()
                try:
                    self.sample(now - last)
                except Exception:
                    _fault("self-time sample", reraise=False)
                last = _clock()  # the sample's own time is charged to nobody
        finally:
            self.done.release()

    def _index(self) -> None:
        """Learn the sites made since the last sample (and forget the code objects that
        matched none before: one of the new sites may be theirs)."""
        sites = list(_sites.values())
        for site in sites[self.seen:]:
            if site.file is not None and site.line is not None:
                self.where[(site.file, site.line)] = site
        self.seen = len(sites)
        for code in [c for c, known in self.codes.items() if known is None]:
            del self.codes[code]

    def site_of(self, code: CodeType) -> object:
        """What a code object is: an instrumented function's site, ``_TOOL``, or None."""
        filename = code.co_filename
        if (os.path.normcase(os.path.abspath(filename)) in self.tool_files
                or os.path.dirname(filename) == _RUNTIME_DIR):
            return _TOOL
        site = self.where.get((filename, code.co_firstlineno))
        if site is not None and site.name.rpartition(".")[2] == code.co_name:
            return site
        return None

    def sample(self, weight: int) -> None:
        """Charge ``weight`` ns to the innermost instrumented function of every other
        thread (or to the runtime, when its code is innermost)."""
        if len(_sites) != self.seen:
            self._index()
        codes = self.codes
        entries = self.entries
        me = self.ident
        frame = None
        guard = _GC_IN_FRAME_ALLOC
        if guard:  # a frame object for each thread's top frame, and the dict
            _gc_room(max(self.threads, threading.active_count()) + 8)
        frames = sys._current_frames()
        self.threads = len(frames)
        try:
            with _lock:
                limit = _gc_room(1) if guard else 0
                counts = _self_counts
                for ident, frame in frames.items():
                    if ident == me:
                        continue
                    counts[0] += 1
                    steps = 0
                    while frame is not None and steps < _MAX_WALK:
                        code = frame.f_code
                        entry = entries.get(code)
                        if entry is None:
                            entry = entries[code] = _entry_offset(code)
                        if frame.f_lasti == entry:
                            # At its first instruction: the frame has done nothing yet. A
                            # thread hands over the GIL where the interpreter checks for it,
                            # at a function's entry among others, so the time that passed
                            # (in C calls of the caller, say) is the caller's, not this new
                            # frame's: without this, the runtime's end(), entered right
                            # after such work, would be charged with it.
                            if guard and _gc_count()[0] >= limit:
                                limit = _gc_room(1)
                            frame = frame.f_back
                            steps += 1
                            continue
                        known = codes.get(code, _UNKNOWN)
                        if known is _UNKNOWN:
                            known = codes[code] = self.site_of(code)
                        if known is _TOOL:
                            counts[2] += 1
                            counts[3] += weight
                            break
                        if known is not None:
                            stats = known.stats.get(_test)
                            if not isinstance(stats, list):
                                stats = _open_row(known, stats)
                            stats[6] += weight
                            stats[7] += 1
                            counts[1] += 1
                            break
                        if guard and _gc_count()[0] >= limit:
                            limit = _gc_room(1)
                        frame = frame.f_back
                        steps += 1
        finally:
            del frames, frame  # no frame is held between samples


def _entry_offset(code: CodeType) -> int:
    """The offset of the code's RESUME, where a frame waits when it is entered and hands over
    the GIL (CPython 3.11+); -2 (no frame is there) before 3.11."""
    import dis

    for instruction in dis.get_instructions(code):
        if instruction.opname == "RESUME":
            return instruction.offset
    return -2


def _set_sampler() -> None:
    """Start, restart or stop the sampler as ``_config.self_time`` says (``_lock`` held)."""
    global _sampler
    interval = _config.self_time
    if _sampler is not None and (_sampler.interval != interval or _sampler_pid != os.getpid()):
        if _sampler_pid == os.getpid():
            _sampler.close()
        _sampler = None
    # (A free-threaded build lets the frames' threads run while they are read: not sampled.)
    if (interval > 0 and _sampler is None and _getframe is not None and not _FREE_THREADED
            and hasattr(sys, "_current_frames")):
        _start_sampler(interval)


_sampler_pid = 0
_self_every = [0.0]  # the last sampler's interval (self_time() reports it after it stopped)


def _start_sampler(interval: float) -> None:
    global _sampler, _sampler_pid
    _sampler = _Sampler(interval)
    _self_every[0] = interval
    _sampler_pid = os.getpid()
    for module in _copies:  # samples in vendored copies' code are the tool's too
        where = getattr(module, "__file__", None)
        if where:
            _sampler.tool_files.add(os.path.normcase(os.path.abspath(where)))


def self_time() -> dict[str, Any] | None:
    """How self time was sampled: ``interval_s``, ``samples`` (threads looked at),
    ``charged`` (samples charged to an instrumented function), ``tool_samples`` and
    ``tool_ns`` (samples, and their time, in the runtime's own code: charged to nobody);
    None when it was not sampled since the last ``reset()``."""
    if not _self_counts[0] and _sampler is None:
        return None
    return {"interval_s": _sampler.interval if _sampler is not None else _self_every[0],
            "samples": _self_counts[0], "charged": _self_counts[1], "tool_samples": _self_counts[2],
            "tool_ns": _self_counts[3]}


# -- spans ---------------------------------------------------------------------------------


class _Off:
    """The no-op span (disabled, or a fault inside the runtime): C enter and exit."""

    __slots__ = ()
    __enter__ = _ENTER
    __exit__ = _EXIT_NOOP


_OFF = _Off()


class _AggSpan:
    """A call, aggregate only (the default mode)."""

    # _t: the start (seconds here, ns in the subclasses); _err: the exception the try
    # form's fail() saw
    __slots__ = ("_t", "_site", "_err")
    __enter__ = _ENTER
    _t: float
    _site: _Site
    _err: BaseException | None

    def _begin(self, site: _Site) -> _AggSpan:
        self._site = site
        self._t = _seconds()
        return self

    def __lt__(self, other: object) -> bool:
        """False: a span is the state of a call begun in a span mode, which the exit written
        into a bound function tests with ``state < SITE.limit`` (``engine/bytecode.py``,
        ``_inline_exits``) and then hands to the mode's ``end_site``."""
        return False

    def __exit__(self, et: type | None, ev: BaseException | None, tb: object) -> None:
        try:
            seconds = _seconds() - self._t
            site = self._site
            site.n += 1  # _account, inlined
            site.total += seconds
            if seconds > site.high:
                site.high = seconds
            if seconds < site.low:
                site.low = seconds
                if site.n == 1:  # the first call since the last fold: see _recent
                    _recent.append(site)
            # After the call is counted: a fold in between must never see more errors
            # than calls.
            if et is not None and not issubclass(et, _NOT_ERRORS):
                _error(site, et)
        except Exception:  # the runtime never raises into user code
            _fault("span end")

    if _FREE_THREADED:
        def __exit__(self, et: type | None, ev: BaseException | None, tb: object) -> None:  # noqa: F811
            try:
                site = self._site
                _account(site, _seconds() - self._t)
                if et is not None and not issubclass(et, _NOT_ERRORS):
                    _error(site, et)
            except Exception:
                _fault("span end")


def _describe(kind: type, error: object) -> str:
    """``Type: message`` (a failing ``__str__`` must not lose the span)."""
    try:
        return f"{kind.__name__}: {error}"
    except Exception:
        return kind.__name__


def _name_thread(ident: int) -> None:
    _thread_names[ident] = threading.current_thread().name


def _emit(site: _Site, start: int, duration: int, tid: int, span_id: int | None, parent: int | None,
          error: type | None, test: str | None) -> None:
    """Keep one event (the caller checked min_duration and the sample rate)."""
    _events.append((site, start, duration, tid, span_id, parent, error, test))
    if len(_events) >= _SPILL_AT and _lock.acquire(False):
        try:
            _spill()
        finally:
            _lock.release()


class _EvSpan(_AggSpan):
    """A call that may become an event: it has an id, a parent (the current span, kept in
    a contextvar, so threads and asyncio tasks get theirs) and a thread."""

    __slots__ = ("_id", "_parent", "_tok", "_test", "_tid")
    _t: int  # (ns)
    _id: int | None
    _parent: int | None
    _tok: Token[int | None] | None
    _test: str | None
    _tid: int

    def _begin(self, site: _Site) -> _EvSpan:
        self._site = site
        self._test = _test
        tid = self._tid = _get_ident()
        if tid not in _thread_names:
            _name_thread(tid)
        if _parents:
            self._parent = _cv_get()
            self._id = span_id = _next_id()
            self._tok = token = _cv_set(span_id)
            try:
                self._t = _clock()
            except BaseException:  # never leave a span current that will not end
                _cv_reset(token)
                raise
        else:  # only the Chrome trace is on: it nests by time, no contextvar work
            self._parent = self._id = self._tok = None
            self._t = _clock()
        return self

    def __exit__(self, et: type | None, ev: BaseException | None, tb: object) -> None:
        token = None
        try:
            token = self._tok  # first: whatever fails below, the span stops being current
            duration = _clock() - self._t
            site = self._site
            _account(site, duration * 1e-9)
            error = None
            if et is not None and not issubclass(et, _NOT_ERRORS):
                _error(site, et)
                error = et
            if duration >= _min_ns and (_rate >= 1.0 or _random() < _rate):
                _emit(site, self._t, duration, self._tid, self._id, self._parent, error, self._test)
        except Exception:
            _fault("span end (events)")
        if token is not None and (et is not GeneratorExit or _gc_thread[0] != _get_ident()):
            try:
                _cv_reset(token)
            except Exception:  # e.g. a span used across contexts: leave the var alone
                pass


class _EvGenSpan(_EvSpan):
    """A generator's span: never the current span (a contextvar set inside a generator
    leaks to its caller while it is suspended). The decorator form makes it current
    around each step through ``_enter_step`` / ``_exit_step``."""

    __slots__ = ()

    def _begin(self, site: _Site) -> _EvGenSpan:
        self._site = site
        self._parent = _cv_get() if _parents else None
        self._id = _next_id() if _parents else None
        self._tok = None
        self._test = _test
        tid = self._tid = _get_ident()
        if tid not in _thread_names:
            _name_thread(tid)
        self._t = _clock()
        return self

    def _enter_step(self) -> Token[int | None] | None:
        try:
            return _cv_set(self._id) if self._id is not None else None
        except Exception:
            _fault("generator step")
            return None

    def _exit_step(self, token: Token[int | None] | None) -> None:
        try:
            if token is not None:
                _cv_reset(token)
        except Exception:
            pass


def _otel_tracer(site: _Site) -> Any:
    ot = site.ot
    if ot is None:
        ot = site.ot = _otel.get_tracer(site.module)
    return ot


class _OtSpan(_AggSpan):
    """A call as an OpenTelemetry span, current (in OpenTelemetry's context) for the body,
    so spans nest under whatever span is current, e.g. a test's."""

    __slots__ = ("_o", "_tok", "_test", "_tid")
    _t: int  # (ns)
    _o: Any  # the OpenTelemetry span, or None
    _tok: Token[Any] | None
    _test: str | None
    _tid: int

    def _begin(self, site: _Site) -> _OtSpan:
        self._site = site
        if _ev_on:
            self._test = _test
            tid = self._tid = _get_ident()
            if tid not in _thread_names:
                _name_thread(tid)
        try:
            otel = _otel
            attrs = site._attrs
            span = self._o = (site.ot or _otel_tracer(site)).start_span(
                site.name, attributes=attrs if attrs is not None else site.otel_attributes())
            self._tok = otel.attach(otel.set_span_in_context(span))
        except Exception:  # a failing exporter or processor: still count the call
            self._o = self._tok = None
            _fault("OpenTelemetry span start")
        try:
            self._t = _clock()
        except BaseException:  # never leave a span current (or open) that will not end
            if self._tok is not None:
                _otel.detach(self._tok)
            if self._o is not None:
                self._o.end()
            raise
        return self

    def __exit__(self, et: type | None, ev: BaseException | None, tb: object) -> None:
        error = duration = span = token = None
        try:
            span, token = self._o, self._tok  # first: whatever fails below, the span ends
            duration = _clock() - self._t
            if et is not None and not issubclass(et, _NOT_ERRORS):
                error = et
            site = self._site
            _account(site, duration * 1e-9)
            if error is not None:
                _error(site, error)
        except Exception:
            _fault("span end (OpenTelemetry)")
        if span is not None:
            try:
                if token is not None and (et is not GeneratorExit or _gc_thread[0] != _get_ident()):
                    _otel.detach(token)
                if error is not None:
                    span.record_exception(ev)
                    span.set_status(_otel.error_status(_describe(error, ev)))
            except Exception:
                _fault("OpenTelemetry span end", reraise=False)  # (the span must still end)
            finally:
                try:
                    span.end()
                except Exception:
                    _fault("OpenTelemetry span end")
        if _ev_on and duration is not None:
            try:
                if duration >= _min_ns and (_rate >= 1.0 or _random() < _rate):
                    span_id = parent = None
                    if span is not None:
                        span_id = span.get_span_context().span_id
                        parent = span.parent.span_id if span.parent is not None else None
                    _emit(self._site, self._t, duration, self._tid, span_id, parent, error, self._test)
            except Exception:
                _fault("span end (events)")


class _OtGenSpan(_OtSpan):
    """A generator's OpenTelemetry span: started with the current span as parent, never
    made current by ``with`` (see ``_EvGenSpan``); per step by the decorator."""

    __slots__ = ()

    def _begin(self, site: _Site) -> _OtGenSpan:
        self._site = site
        self._tok = None
        if _ev_on:
            self._test = _test
            tid = self._tid = _get_ident()
            if tid not in _thread_names:
                _name_thread(tid)
        try:
            self._o = _otel_tracer(site).start_span(site.name, attributes=site.otel_attributes())
        except Exception:
            self._o = None
            _fault("OpenTelemetry span start")
        try:
            self._t = _clock()
        except BaseException:
            if self._o is not None:
                self._o.end()
            raise
        return self

    def _enter_step(self) -> Token[Any] | None:
        try:
            span = self._o
            return None if span is None else _otel.attach(_otel.set_span_in_context(span))
        except Exception:
            _fault("generator step")
            return None

    def _exit_step(self, token: Token[Any] | None) -> None:
        try:
            if token is not None:
                _otel.detach(token)
        except Exception:
            pass


# -- tracers --------------------------------------------------------------------------------


class Tracer:
    """The spans of one module: ``span(name)``, ``generator_span(name)`` and
    ``instrument(name)``.

    ``tracer()`` hands out instances of the subclass of the current mode (``_install``
    swaps ``__class__``): there ``span`` is a plain method, which CPython specialises best.
    The base class's ``span`` / ``generator_span`` slots serve vendored copies' tracers that
    forward to the collector's (``_FollowTracer``)."""

    __slots__ = ("module", "span", "generator_span", "start", "start_generator", "end", "end_site", "fail", "raised",
                 "ends", "ends_site", "raises", "_by_name", "_by_code", "_where", "_lead", "_followers",
                 "__weakref__")
    # the span classes of span() and generator_span()
    _kinds: tuple[type[_AggSpan], type[_AggSpan]] = (_AggSpan, _AggSpan)
    # The mode's methods (the subclasses' class attributes; a follower's slots: see _follow).
    span: Callable[[str], _AggSpan | _Off]
    generator_span: Callable[[str], _AggSpan | _Off]
    start: Callable[[], object]
    start_generator: Callable[[], object]
    end: Callable[[str, object], None]
    end_site: Callable[[_Site, object], None]
    fail: Callable[[str, object], object]
    raised: Callable[[str, object], None]
    raised_untimed: Callable[[str, object], None]  # (a class attribute of each mode's class)
    # What the try form's exit calls as compiled on the fly, by whether its entry left the
    # call untimed (``engine.compiler._skipping``): {False: end, True: nothing} for a site's
    # name and for the site itself, and on the exception path {False: raised, True: the
    # mode's raised for an untimed call} (_install).
    # (On 3.11 the normal path's exit jumps over its call instead: ``bytecode._jump_exits``.)
    ends: dict[bool, Callable[[str, object], object]]
    ends_site: dict[bool, Callable[[_Site, object], object]]
    raises: dict[bool, Callable[[str, object], None]]

    def __init__(self, module: str) -> None:
        self.module = module
        # name -> _Site (this module's sites seen so far; a bound site also under itself)
        self._by_name: dict[str | _Site | None, _Site] = {}
        # code object -> _Site, learnt by the try form's end() in the span modes, so that its
        # start() begins the span under its real name (no rename, no attributes set late).
        self._by_code: dict[CodeType, _Site] = {}
        self._where: dict[str, tuple[str | None, int | None]] = {}  # name -> (file, line) known before the first call
        self._lead: Tracer | None = None  # (vendored copies) the tracer spans go to
        self._followers: list[Tracer] = []  # (collector) vendored copies' tracers of this module
        _install(self)

    def _span_agg(self, name: str) -> _AggSpan | _Off:
        # The hot path of the default mode (what _AggSpan._begin does, inlined; a try
        # block costs nothing until something raises).
        try:
            site = self._by_name[name]
            span = _AggSpan()
            span._site = site
            span._t = _seconds()
            return span
        except Exception:  # KeyError: the first call of this site (or an internal fault)
            return self._first(name, False)

    def _span_of_kind(self, name: str) -> _AggSpan | _Off:
        """span() of the modes with span objects (events, OpenTelemetry): ``_kinds[0]``."""
        try:
            return self._kinds[0]()._begin(self._by_name[name])
        except Exception:
            return self._first(name, False)

    def _gspan_of_kind(self, name: str) -> _AggSpan | _Off:
        try:
            return self._kinds[1]()._begin(self._by_name[name])
        except Exception:
            return self._first(name, True)

    def _span_off(self, name: str) -> _Off:
        return _OFF

    # -- the try form (``--style try``): no ``with`` protocol, no object per call --
    #
    #     _telemetry_t = _telemetry.start()
    #     try:
    #         ...body...
    #     except BaseException:
    #         _telemetry_t = _telemetry.fail("Q", _telemetry_t)
    #         raise
    #     finally:
    #         _telemetry.end("Q", _telemetry_t)
    #
    # ``start`` takes no name, so that in the aggregate mode it is the C clock itself; the
    # name comes with ``end``. There the state is the start time (a float, in seconds), or
    # on a site's first call after ``fail`` a (start, exception type) pair: ``end`` records
    # the duration before the error, as ``_AggSpan.__exit__`` does. In the other modes the state is a span object
    # begun on the tracer's placeholder site, which ``end`` replaces with the real one
    # (renaming the OpenTelemetry span, as its API allows until the span ends).

    def _end_agg(self, name: str, state: object) -> None:
        try:
            site = self._by_name[name]
            left = site.left  # 0: every call timed; see _unsample
            if left:
                if left > 1:  # a sampled site's untimed call: counted by the countdown alone
                    site.left = left - 1
                    return
                if left < 0:  # timed, counting down to a decision (the first, or the one after it)
                    site.left = left + 1
                else:  # a sampled site's timed call; the next every - 1 calls are not
                    every = site.every
                    site.left = every
                    site.given += every - 1
            seconds = _seconds() - state  # type: ignore[operator]
            site.n += 1  # _account, inlined
            site.total += seconds
            if seconds > site.high:
                site.high = seconds
            if seconds < site.low:
                site.low = seconds
                if site.n == 1:  # the first call since the last fold: see _recent
                    _recent.append(site)
            if left:
                if left == 1:
                    site.sm += 1
                    site.ss += seconds
                    site.sq += seconds * seconds
                    if site.sm >= site.due:  # a window where the period may grow: a look
                        _hot(site)
                elif left == -1:
                    _hot(site)
        except Exception:  # the first call of the site, an error, or a state of another mode
            self._end_other(name, state)

    def _end_site_agg(self, site: _Site, state: object) -> None:
        """``end`` of the try form as compiled on the fly, bound (``engine/bytecode.py``,
        ``bind_sites``): given the site itself, not its name, so no lookup. A sampled site's
        untimed calls never get here: the function's entry (``compiler._skipping``) counts
        them down from the ``skip`` that the site's timed call grants here (its untimed calls:
        ``granted - skip``, see ``_take``; on 3.11 it takes them from the iterator of slots,
        ``ticks``, granted here: ``bytecode._tight_entry``) and hands its ``finally`` a state of None, for
        which it calls nothing (on 3.11 it jumps over the call; from 3.12 it calls a C
        function that does nothing: ``engine/bytecode.py``, ``_jump_exits``). A site decided
        to be timed on every call (``left`` 0, once its window after the decision is counted
        down) stops after its count: one test. With a GIL no
        other thread runs between two instructions that make no call (nor backward jump):
        so the entry's test and its count are one
        step, ``left`` is read and written back with no call in between, and a call's count
        (``_account``) is inline, not a call (a fold of another thread in its middle would
        leave the site out of ``_recent``: see ``_take``; the race tests of test_semantics.py
        catch it)."""
        try:
            seconds = _seconds() - state  # type: ignore[operator]
            site.n += 1  # _account, inlined
            site.total += seconds
            if seconds > site.high:
                site.high = seconds
            if seconds < site.low:
                site.low = seconds
                if site.n == 1:  # the first call since the last fold: see _recent
                    _recent.append(site)
            if site.left:  # undecided or sampled (decided to time every call: 0, and done)
                left = site.left
                if left < 0:  # counting down to a decision (the first, or the one after it)
                    site.left = left + 1
                every = site.every
                if every > 0:  # sampled: the entry leaves the next every - 1 calls untimed
                    if _TICKS:  # (3.11) as slots of an iterator, which the entry takes from
                        new = iter(_SLOTS.get(every - 1) or _slots(every - 1))
                        ticks = site.ticks  # (_unused, inlined: topped up, as below)
                        unused = ticks.__length_hint__()  # type: ignore[attr-defined]
                        if site.ticks is ticks:  # (no other thread's grant or fold during the count)
                            site.ticks = new
                            site.granted += every - 1 - unused
                            if unused:
                                _settle(site, ticks, unused)
                        else:
                            _grant(site, new, every - 1)
                    else:
                        site.granted += every - 1 - site.skip  # (topped up: two timed calls at once
                        site.skip = every - 1                   # grant every - 1 in all)
                    site.sm += 1
                    site.ss += seconds
                    site.sq += seconds * seconds
                    if site.sm >= site.due:  # a window where the period may grow: a look
                        _hot(site)
                if left == -1:
                    _hot(site)
        except Exception:  # a state of another mode, or an internal fault
            self._end_other(site, state)

    def _fail_agg(self, name: str, state: object) -> object:
        try:
            kind = sys.exc_info()[0]
            if kind is not None and not issubclass(kind, _NOT_ERRORS):
                if state.__class__ is float:
                    site = self._by_name.get(name)
                    if site is None:  # the site's first call (frames: _site, this, the user's function)
                        site = self._by_name[name] = self._site(name, 2)
                    # Counted here, so that end() stays on its fast path (a state of another
                    # type would cost it a caught TypeError per error), and always here: an
                    # error carried to end() in the state was lost when end() took the call
                    # as one of a sampled site's untimed calls (a first call that raised
                    # while other threads made the site sampled before its end() ran).
                    _error(site, kind)
                elif isinstance(state, _AggSpan):  # begun in a span mode: end() ends the span
                    state._err = _handled()
        except Exception:
            _fault("fail")
        return state

    def _placeholder(self) -> _Site:
        site = self._by_name.get(None)
        if site is None:
            site = self._by_name[None] = _Site(self.module, self.module, None, None)
        return site

    def _caller_site(self) -> _Site:
        """The site of the function that called start() (frames: this, start, the function),
        once end() has named it; the placeholder before."""
        site = self._by_code.get(_getframe(2).f_code) if _getframe is not None else None
        return site if site is not None else self._placeholder()

    def _start_span(self) -> object:
        try:
            span = self._kinds[0]()
            span._err = None  # set: end() reads it, and an unset slot would cost it an AttributeError
            # _caller_site, inlined on this hot path (frames: this, the function)
            site = self._by_code.get(_getframe(1).f_code) if _getframe is not None else None
            return span._begin(site if site is not None else self._placeholder())
        except Exception:
            _fault("start")
            return None

    def _start_generator_span(self) -> object:
        try:
            span = self._kinds[1]()
            span._err = None
            return span._begin(self._caller_site())
        except Exception:
            _fault("start")
            return None

    def _end_span(self, name: str | _Site, state: object, depth: int = 2) -> None:
        """``end`` of the span modes; ``depth``: frames from ``_end_span_slow`` up to the
        user's function (2: this was called by it)."""
        try:  # the common case: a span begun on its own site, no error
            fast = state._site is self._by_name[name] and state._err is None  # type: ignore[attr-defined]
        except Exception:
            fast = False
        if fast:
            state.__exit__(None, None, None)  # type: ignore[attr-defined]  # (never raises)
            return
        self._end_span_slow(name, state, depth)

    def _end_span_slow(self, name: str | _Site, state: object, depth: int) -> None:
        """``end`` of the span modes off the fast path; ``depth``: frames from this one up to
        the user's function."""
        try:
            if not isinstance(state, _AggSpan):
                self._end_other(name, state)
                return
            site = self._by_name.get(name)
            if site is None:
                site = self._by_name[name] = self._site(name, depth + 1)
            if state._site is not site:  # begun on the placeholder: rename it
                state._site = site
                otel_span = getattr(state, "_o", None)
                if otel_span is not None:
                    try:
                        otel_span.update_name(site.name)
                        otel_span.set_attributes(site.otel_attributes())
                    except Exception:
                        _fault("OpenTelemetry span name")
                if _getframe is not None:  # the user's function: its next start() knows the site
                    code = _getframe(depth).f_code
                    self._by_code[code] = site
                    # A bound function's start() is its site's (``_Site.start``): the tracer of
                    # the module name it was bound for, not this one when the code runs under
                    # another name (``python -m``: ``__main__``). That tracer learns it too.
                    owner = _tracers.get(site.module)
                    if owner is not None and owner is not self:
                        owner._by_code[code] = site
            error = getattr(state, "_err", None)
            if error is None:
                state.__exit__(None, None, None)
            else:
                state.__exit__(type(error), error, error.__traceback__)
        except Exception:
            _fault("end")

    def _fail_span(self, name: str, state: object) -> object:
        try:
            error = _handled()
            if isinstance(state, _AggSpan) and error is not None:
                state._err = error
        except Exception:
            _fault("fail")
        return state

    def _raised(self, name: str | _Site, state: object) -> None:
        """``end`` for a call that raised: the try form as compiled on the fly calls it from
        its ``finally`` block's exception path (``engine/bytecode.py``), where the exception
        on its way out is the one being handled, instead of ``fail`` then ``end``.

        In the aggregate mode a bound site's timed call that raised is counted as one that
        returned, by ``end_site`` (which grants a sampled site's next untimed calls and
        counts down to the decision), and its error kept: calls that raise are sampled as
        the others are, as the text's ``fail`` then ``end`` does. (A site whose calls mostly
        raise, a parser's exceptions for control flow, was timed on every call and never
        decided, and the estimate of its untimed calls took the mean of the timed calls that
        returned alone.)"""
        try:
            if state.__class__ is float and name.__class__ is _Site and _mode == "agg" and not _FREE_THREADED:
                # A bound site's timed call, the common case (without the tests below)
                error = _handled()
                self._end_site_agg(name, state)
                if error is not None and not isinstance(error, _NOT_ERRORS):
                    _error(name, error.__class__)
                return
            error = _handled()
            if isinstance(state, _AggSpan):  # a span mode (or one begun before the mode changed)
                if error is not None:
                    state._err = error
                self._end_span_slow(name, state, 2)  # frames: that, this, the user's function
                return
            if state is None:  # an untimed call (counted by the entry), or started while disabled
                if (_mode == "agg" and isinstance(name, _Site) and error is not None
                        and not isinstance(error, _NOT_ERRORS)):
                    _error(name, type(error))
                return
            if state.__class__ is not float:
                return  # nothing was measured
            seconds = _seconds() - state
            site = self._by_name.get(name)
            if site is None:  # frames: _site, this, the user's function
                site = self._by_name[name] = self._site(name, 2)
            _account(site, seconds)
            if error is not None and not isinstance(error, _NOT_ERRORS):
                _error(site, type(error))
        except Exception:
            _fault("end (raised)")

    def _raised_untimed_agg(self, name: str | _Site, state: object) -> None:
        """``raises[True]`` of the aggregate mode (``raised`` of a call with no state): a
        bound site's untimed call, which its entry counted, so only its error is counted
        here, inline. A parser that raises for control flow makes most of its calls so
        (pyparsing's suite: 15 million of 72 million): this path is ``raised``'s without its
        tests for the other cases (a span, a timed call), which go there."""
        try:
            if state is None and name.__class__ is _Site:
                error = _handled()
                if error is not None and not isinstance(error, _NOT_ERRORS):
                    errs = name.errs
                    errs.append(error.__class__)  # _error, inlined
                    held = len(errs)
                    if held == 1:
                        _recent.append(name)
                    elif held > _DRAIN_AT:
                        _drain_soon(name)
                return
        except Exception:
            _fault("end (raised)")
            return
        self._raised(name, state)

    def _end_other(self, name: str | _Site, state: object) -> None:
        """``end`` off its fast path: the site's first call, a span of another mode (the mode
        changed during the call). ``fail`` counts every error of a timed call itself, and
        puts one on a span of another mode."""
        try:
            if isinstance(state, _AggSpan):
                # frames: _end_span_slow, _end_span, this, end (either mode's), the user's function
                Tracer._end_span(self, name, state, 4)
                return
            if state.__class__ is not float:
                return  # started while disabled (None): nothing was measured
            seconds = _seconds() - state
            site = self._by_name.get(name)
            if site is None:  # frames: _site, this, end (either mode's), the user's function
                site = self._by_name[name] = self._site(name, 3)
            _account(site, seconds)
        except Exception:
            _fault("end")

    def _end_counted(self, name: str | _Site, state: object) -> None:
        """``end`` of the aggregate mode on a free-threaded build: every call through
        ``_account`` (and its lock)."""
        self._end_other(name, state)

    def _first(self, name: str, generator: bool) -> _AggSpan | _Off:
        """The first call of a site through this tracer. Frames: the user's function
        called span() (2 up from ``_site``), which called this."""
        try:
            site = self._by_name[name] = self._site(name, 3)
            return self._kinds[generator]()._begin(site)
        except Exception:
            _fault("first call")
            return _OFF

    def _site(self, name: str | _Site, depth: int) -> _Site:
        if isinstance(name, _Site):  # bound by another tracer's module name (bind_site)
            return name
        key = (self.module, name)
        site = _sites.get(key)
        if site is None:
            where = self._where.get(name)
            if where is None:
                where = (None, None)
                if _getframe is not None:
                    try:  # the caller's frame, once per site (never per call)
                        code = _getframe(depth).f_code
                        where = (code.co_filename, code.co_firstlineno)
                    except ValueError:
                        pass
            site = _sites.setdefault(key, _Site(self.module, name, *where))
            _maybe_otel()
        return site

    def _register(self, name: str, func: object) -> None:
        """Remember where a decorated function is (its span is called from a wrapper)."""
        code = getattr(func, "__code__", None)
        if code is not None:
            where = (code.co_filename, code.co_firstlineno)
            self._where[name] = where
            if self._lead is not None:
                self._lead._where[name] = where

    def instrument(self, name: str) -> Callable[[_F], _F]:
        """Decorator form: one span per call of sync, async, generator and async generator
        functions (``staticmethod``/``classmethod`` objects are unwrapped and rewrapped).
        Keeps ``functools.wraps`` metadata (``__wrapped__``, ``__doc__``, signature). When
        the runtime is disabled at decoration time the function is returned unchanged."""

        def decorate(func: _F) -> _F:
            try:
                wrapped: _F = _wrap(self, name, func)
                return wrapped
            except Exception:
                _fault("instrument")
                return func

        return decorate

    # -- forwarding (see _adopt) --

    def _follow(self, lead: Tracer) -> None:
        self._lead = lead
        self.__class__ = _FollowTracer  # first: in the mode classes ``span`` is a method
        self.span = lead.span
        self.generator_span = lead.generator_span
        self.start, self.start_generator = lead.start, lead.start_generator
        self.end, self.end_site, self.fail, self.raised = lead.end, lead.end_site, lead.fail, lead.raised
        self.ends, self.ends_site, self.raises = lead.ends, lead.ends_site, lead.raises
        _clock_sites(self)

    def _unfollow(self) -> None:
        self._lead = None
        _install(self)

    def __repr__(self) -> str:
        return f"<telemetry {type(self).__name__} {self.module!r}>"

    def __reduce__(self) -> tuple[Callable[[str], Tracer], tuple[str]]:
        # There is one tracer per module name: pickled, copied or deep-copied, a tracer is a
        # reference to its module's, found again by tracer(). (cloudpickle pickles a nested
        # function by value with the globals it uses, the module's _telemetry among them; the
        # default reduction of a slotted object would restore slots that the mode classes
        # shadow with methods, and fail.)
        return (tracer, (self.module,))


class _AggTracer(Tracer):
    __slots__ = ()
    span = Tracer._span_agg
    generator_span = Tracer._span_agg
    start = start_generator = _seconds  # a C function: the try form's start costs a clock read
    end = Tracer._end_counted if _FREE_THREADED else Tracer._end_agg
    end_site = Tracer._end_counted if _FREE_THREADED else Tracer._end_site_agg
    fail = Tracer._fail_agg
    raised = Tracer._raised
    raised_untimed = Tracer._raised if _FREE_THREADED else Tracer._raised_untimed_agg


class _SpanTracer(Tracer):
    """The modes where a call is a span object of the classes ``_kinds``."""

    __slots__ = ()
    span = Tracer._span_of_kind
    generator_span = Tracer._gspan_of_kind
    start = Tracer._start_span
    start_generator = Tracer._start_generator_span
    end = end_site = Tracer._end_span
    fail = Tracer._fail_span
    raised = raised_untimed = Tracer._raised


class _EvTracer(_SpanTracer):
    __slots__ = ()
    _kinds = (_EvSpan, _EvGenSpan)


class _OtTracer(_SpanTracer):
    __slots__ = ()
    _kinds = (_OtSpan, _OtGenSpan)


class _OffTracer(Tracer):
    __slots__ = ()
    span = Tracer._span_off
    generator_span = Tracer._span_off
    # C functions, not Python ones: a disabled try-form call costs two C calls.
    # ({}.clear() -> None; {}.get(name, state) -> state.)
    start = start_generator = _NOTHING.clear
    fail = end = raised_untimed = _NOTHING.get
    # A disabled call's state is None, for which a bound function's exit calls nothing (it
    # jumps over its call, or picks ``{}.get``): these get only a call begun in another mode
    # before the runtime was disabled, and end it as a span mode does (a span ended, not left
    # current; the aggregate mode's float counted). The text's try form calls ``end``, which
    # gets every disabled call's None.
    end_site = Tracer._end_span
    raised = Tracer._raised


class _FollowTracer(Tracer):
    """A vendored copy's tracer while it forwards: ``span`` and ``generator_span`` are the
    collector tracer's bound methods, kept in the base class's slots."""

    __slots__ = ()


_TRACER_CLASSES: dict[str, type[Tracer]] = {"off": _OffTracer, "agg": _AggTracer, "ev": _EvTracer, "otel": _OtTracer}


def _install(tr: Tracer) -> None:
    """Give the tracer the current mode's class (and its followers the new methods)."""
    if tr._lead is not None:
        return
    tr.__class__ = _TRACER_CLASSES[_mode]
    # Dicts keyed by ``state is None`` (a dict's subscript specialises for any key, a tuple's
    # not for a bool); a dict's get(name, state) is a C function that does nothing.
    tr.ends = {False: tr.end, True: _NOTHING.get}
    tr.ends_site = {False: tr.end_site, True: _NOTHING.get}
    tr.raises = {False: tr.raised, True: tr.raised_untimed}
    _clock_sites(tr)
    for follower in list(tr._followers):
        try:
            follower._follow(tr)
        except Exception:
            _fault("vendored copy")


def _clock_sites(tr: Tracer) -> None:
    """The tracer's ``start`` into each of its module's sites (``_Site.start``): what a
    bound entry calls for its start time, in every mode."""
    start = tr.start
    for site in list(tr._by_name.values()):
        if site.module == tr.module:
            _set_start(site, start)


def _set_start(site: _Site, start: Callable[[], object]) -> None:
    """The site's ``start`` and the ``limit`` that goes with it (see ``_Site``)."""
    site.start = start
    site.limit = _INF if start is _seconds and not _FREE_THREADED else -_INF


def bind_site(module: str, name: str, file: str | None, line: int | None) -> _Site:
    """The site of function ``name`` of ``module`` (at ``file``, ``line``: where its code is),
    made now if the function has not been called yet, for the import hook to bind into the
    function's code (``engine/bytecode.py``, ``bind_sites``). Known to the module's tracer by
    name and by itself, so that every path of ``end_site`` finds it. A site made here is left
    out of snapshots until its first call."""
    tr = tracer(module)
    site = tr._by_name.get(name)
    if site is None:
        key = (module, name)
        site = _sites.get(key)
        if site is None:
            fresh = _Site(module, name, file, line)
            fresh.shown = False
            site = _sites.setdefault(key, fresh)
        tr._by_name[name] = site
    tr._by_name[site] = site
    _set_start(site, tr.start)
    return site


def tracer(module: str) -> Tracer:
    """The tracer of ``module`` (one per module name). Never raises."""
    found = _tracers.get(module)
    if found is None:
        try:
            found = _tracers.setdefault(module, Tracer(module))
            _maybe_otel()
            lead = _lead if _lead is not None else _find_collector()
            if lead is not None:
                lead._attach_follower(found)
        except Exception:
            found = _tracers.get(module) or Tracer(module)
            _fault("tracer", reraise=False)
    return found


def no_telemetry(func: _F) -> _F:
    """Mark a function the tool must leave alone (the scanner recognises the name)."""
    return func


# -- the decorator ---------------------------------------------------------------------------

_CO_GENERATOR = 0x20
_CO_COROUTINE = 0x80
_CO_ASYNC_GENERATOR = 0x200


def _wrap(tr: Tracer, name: str, func: Any) -> Any:
    if isinstance(func, (staticmethod, classmethod)):
        return type(func)(_wrap(tr, name, func.__func__))
    tr._register(name, func)
    if _config.disabled:
        return func
    code = getattr(func, "__code__", None)
    flags = code.co_flags if code is not None else 0

    if flags & _CO_ASYNC_GENERATOR:
        @functools.wraps(func)
        async def async_gen_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            span = tr.generator_span(name)
            with span:
                agen = func(*args, **kwargs)
                enter = getattr(span, "_enter_step", None)
                leave = getattr(span, "_exit_step", None)
                try:
                    value = thrown = None
                    while True:
                        token = enter() if enter is not None else None
                        try:
                            if thrown is None:
                                item = await agen.asend(value)
                            else:
                                error, thrown = thrown, None
                                item = await agen.athrow(error)
                                del error
                        except StopAsyncIteration:
                            return
                        finally:
                            if enter is not None:
                                leave(token)  # type: ignore[misc]  # (there with enter)
                        try:
                            value = yield item
                        except GeneratorExit:
                            raise
                        except BaseException as exc:  # thrown in by the consumer: forward it
                            thrown, value = exc, None
                finally:
                    await agen.aclose()
        return async_gen_wrapper

    if flags & _CO_COROUTINE:
        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with tr.span(name):
                return await func(*args, **kwargs)
        return async_wrapper

    if flags & _CO_GENERATOR:
        @functools.wraps(func)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            span = tr.generator_span(name)
            with span:
                enter = getattr(span, "_enter_step", None)
                if enter is None:
                    return (yield from func(*args, **kwargs))
                return (yield from _stepped(func(*args, **kwargs), enter,
                                            span._exit_step))  # type: ignore[union-attr]  # (with _enter_step)
        return gen_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with tr.span(name):
            return func(*args, **kwargs)
    return wrapper


def _stepped(gen: Generator[Any, Any, Any], enter: Callable[[], Any],
             leave: Callable[[Any], None]) -> Generator[Any, Any, Any]:
    """``yield from gen`` with the generator's span current during each step only."""
    value = thrown = None
    while True:
        token = enter()
        try:
            if thrown is None:
                item = gen.send(value)
            else:
                error, thrown = thrown, None
                item = gen.throw(error)
                del error
        except StopIteration as stop:
            return stop.value
        finally:
            leave(token)
        try:
            value = yield item
        except GeneratorExit:  # (no context change while the GC runs: see _gc_thread)
            token = enter() if _gc_thread[0] != _get_ident() else None
            try:
                gen.close()
            finally:
                leave(token)
            raise
        except BaseException as exc:  # thrown in by the consumer: forward it
            thrown, value = exc, None


# -- modes, OpenTelemetry ---------------------------------------------------------------------


def _otel_configured() -> bool:
    """A real TracerProvider is set (without importing anything)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    provider = getattr(trace, "_TRACER_PROVIDER", None)  # None until set_tracer_provider()
    if provider is None:
        return False
    kind = type(provider)  # OpenTelemetry's own placeholders do not count; others' do
    return not (kind.__module__ == "opentelemetry.trace" and kind.__name__ in ("ProxyTracerProvider",
                                                                               "NoOpTracerProvider"))


class _OtelBridge:
    """The few OpenTelemetry functions the spans call."""

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import Status, StatusCode

        self.trace = trace
        self.attach = context.attach
        self.detach = context.detach
        self.set_span_in_context = trace.set_span_in_context
        self.error_status: Callable[[str], Status] = lambda description: Status(StatusCode.ERROR, description)

    def provider(self) -> Any:
        return _config.otel_provider or self.trace.get_tracer_provider()

    def get_tracer(self, module: str) -> Any:
        # The global provider's tracers are proxies until a provider is set: fine.
        provider = _config.otel_provider
        return provider.get_tracer(module) if provider is not None else self.trace.get_tracer(module)

    def force_flush(self) -> None:
        flush = getattr(self.provider(), "force_flush", None)
        if flush is not None:
            flush()


def _load_otel() -> bool:
    global _otel
    if _otel is None:
        try:
            _otel = _OtelBridge()
        except Exception:  # not installed (or broken): the sink stays off
            return False
    return True


def _wanted_mode() -> str:
    cfg = _config
    if cfg.disabled:
        return "off"
    otel = cfg.otel
    if otel is True or (otel == "auto" and (cfg.otel_provider is not None or _otel_configured())):
        if _load_otel():
            return "otel"
    if cfg.jsonl or cfg.trace or cfg.keep_events or cfg.otlp:
        return "ev"
    return "agg"


def _apply() -> None:
    """Recompute the mode from the settings and reinstall every tracer."""
    global _mode, _min_ns, _rate, _random, _ev_on, _parents
    cfg = _config
    _min_ns = max(0, int(cfg.min_duration * 1e9))
    _rate = min(1.0, max(0.0, float(cfg.sample_rate)))
    if _rate < 1.0 and _random is None:
        import random

        _random = random.random
    _ev_on = bool(cfg.jsonl or cfg.trace or cfg.keep_events or cfg.otlp)
    _parents = bool(cfg.jsonl or cfg.keep_events or cfg.otlp)
    _mode = _wanted_mode()
    for tr in list(_tracers.values()):
        _install(tr)
    if _mode != "agg":  # calls are left untimed (and end() uncalled) in the aggregate mode only
        for site in list(_sites.values()):
            _withdraw(site)


def _maybe_otel() -> None:
    """Notice a TracerProvider set after this runtime was imported (checked when a tracer
    or site is made, at each fold, test switch, configure and flush: never per call)."""
    if _mode not in ("otel", "off") and _config.otel == "auto" and _otel_configured():
        _apply()


# -- sinks ----------------------------------------------------------------------------------


def _event_dict(event: _Event) -> EventDict:
    site, start, duration, tid, span_id, parent, error, test = event
    out: EventDict = {"name": site.name, "module": site.module, "start_ns": start, "ts_ns": start + _EPOCH_NS,
                      "duration_ns": duration, "pid": _pid, "tid": tid, "thread": _thread_names.get(tid),
                      "id": span_id, "parent": parent, "test": test}
    if error is not None:
        out["exception"] = _exception_name(error)
    return out


def _expand(path: str) -> str:
    return path.replace("{pid}", str(_pid))


class _JsonlSink:
    """Appends each spilled batch of events to a file, one JSON object a line, in one
    ``write`` (O_APPEND: processes sharing the file do not interleave lines). Lines are
    formatted by hand from per-site, per-test and per-thread JSON fragments (json.dumps of
    a dict per event costs several microseconds)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._json: dict[object, str] = {}  # str/None -> its JSON text

    def _quote(self, text: object) -> str:
        found = self._json.get(text)
        if found is None:
            import json

            found = self._json[text] = json.dumps(text)
        return found

    def take(self, batch: list[_Event]) -> None:
        quote = self._quote
        epoch, pid = _EPOCH_NS, _pid
        names = _thread_names
        lines = []
        for site, start, duration, tid, span_id, parent, error, test in batch:
            line = (f'{{"name":{quote(site.name)},"module":{quote(site.module)},"start_ns":{start},'
                    f'"ts_ns":{start + epoch},"duration_ns":{duration},"pid":{pid},"tid":{tid},'
                    f'"thread":{quote(names.get(tid))},"id":{"null" if span_id is None else span_id},'
                    f'"parent":{"null" if parent is None else parent},"test":{quote(test)}')
            if error is not None:
                line += f',"exception":{quote(_exception_name(error))}'
            lines.append(line + "}\n")
        data = "".join(lines).encode("utf-8")
        fd = os.open(_expand(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    def write(self) -> None:
        pass


class _KeepSink:
    """Keeps events in memory (up to ``max_events``; the rest are counted as dropped)."""

    def __init__(self) -> None:
        self.kept: list[_Event] = []
        self.dropped = 0

    def take(self, batch: list[_Event]) -> None:
        room = _config.max_events - len(self.kept)
        if room >= len(batch):
            self.kept.extend(batch)
        else:
            self.kept.extend(batch[:max(room, 0)])
            self.dropped += len(batch) - max(room, 0)

    def write(self) -> None:
        pass


class _TraceSink(_KeepSink):
    """Keeps events and writes them as a Chrome trace event file (JSON object format) at
    each flush: "X" (complete) events, microseconds, one track per thread."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.forked = False

    def write(self) -> None:
        import json

        path = _expand(self.path)
        if self.forked and "{pid}" not in self.path:  # a forked child: do not clobber the parent's
            stem, dot, suffix = path.rpartition(".")
            path = f"{stem}.{_pid}.{suffix}" if dot and "/" not in suffix else f"{path}.{_pid}"
        # flush() holds _lock and has folded the buffers: the aggregate is exact here.
        document = chrome_trace([_event_dict(e) for e in self.kept], dropped=self.dropped, functions=_rows(False),
                                self_time=self_time())
        tmp = f"{path}.{_pid}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(document, handle, separators=(",", ":"))
        os.replace(tmp, path)


_sinks: dict[str, Any] = {}  # "jsonl" | "trace" | "keep" | "otlp" -> sink (take(batch), write())


def _write_sinks() -> None:
    """Have each sink write what it holds (``_lock`` held); a failure is counted."""
    for key, sink in list(_sinks.items()):
        try:
            sink.write()
            if key in _losses and isinstance(sink, _KeepSink) and _losses[key][1].startswith("write: "):
                del _losses[key]  # written since: the earlier failure lost nothing in the end
        except Exception as exc:
            if isinstance(sink, _KeepSink):  # the file holds them all: a failed write loses them all
                _losses[key] = [len(sink.kept), f"write: {type(exc).__name__}: {exc}"]
            else:
                _lost(key, 0, exc)


def _set_sinks() -> None:
    """Make the sinks match the settings (the caller spilled pending events first)."""
    cfg = _config
    for key, path, kind in (("jsonl", cfg.jsonl, _JsonlSink), ("trace", cfg.trace, _TraceSink)):
        sink = _sinks.get(key)
        if not path:
            _sinks.pop(key, None)
        elif sink is None or sink.path != path:
            _sinks[key] = kind(path)
    if cfg.keep_events:
        _sinks.setdefault("keep", _KeepSink())
    else:
        _sinks.pop("keep", None)
    otlp = _sinks.get("otlp")
    if cfg.otlp and (otlp is None or otlp.settings is not cfg.otlp):
        if otlp is not None:
            otlp.write()
        from ._otlp import OtlpSink  # (not in a vendored copy: it forwards to the collector's)

        settings = dict(cfg.otlp)
        sink = OtlpSink(settings.pop("url"), epoch_ns=_EPOCH_NS, **settings)
        sink.settings = cfg.otlp
        _sinks["otlp"] = sink
    elif not cfg.otlp and otlp is not None:
        otlp.write()
        del _sinks["otlp"]


def _spill() -> None:
    """Hand pending events to every sink (caller holds ``_lock``). A failing sink loses its
    batch; the others and the user's code are not affected."""
    n = len(_events)
    if not n:
        return
    batch = _events[:n]
    del _events[:n]
    for key, sink in list(_sinks.items()):
        try:
            sink.take(batch)
        except Exception as exc:  # counted and said (sink_losses()), never raised into user code
            _lost(key, len(batch), exc)


_losses: dict[str, list[Any]] = {}  # sink key -> [events lost, the last error]


def _lost(key: str, count: int, exc: BaseException) -> None:
    entry = _losses.setdefault(key, [0, ""])
    entry[0] += count
    entry[1] = f"{type(exc).__name__}: {exc}"


def sink_losses() -> dict[str, dict[str, Any]]:
    """Events a sink could not take or write ({"jsonl"|"trace"|...: {"lost": events,
    "error": the last error}}); empty when none was lost. A trace file that cannot be
    written loses every event it holds."""
    return {key: {"lost": lost, "error": error} for key, (lost, error) in _losses.items()}


def chrome_trace(events: Iterable[Mapping[str, Any]], *, dropped: int = 0, process_name: str | None = None,
                 functions: Iterable[Mapping[str, Any]] | None = None,
                 self_time: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Chrome trace event document (opens in Perfetto and chrome://tracing) from event
    dicts (``events()``, JSONL lines). Spans of one thread that overlap without nesting
    (asyncio tasks, generators) go to extra tracks, so every track nests properly.
    ``dropped``: the calls that have no event (the cap). ``functions``: snapshot rows, kept
    in ``otherData.functions`` (every call counted, with total and self time, whatever the
    cap); ``self_time``: how self time was sampled."""
    out: list[dict[str, Any]] = []
    by_thread: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for event in events:
        by_thread.setdefault((event.get("pid", 0), event.get("tid", 0)), []).append(event)
    named: set[int] = set()
    next_tid = 1
    for (pid, tid), items in by_thread.items():
        if pid not in named:
            named.add(pid)
            label = process_name or f"{os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'python'} ({pid})"
            out.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": label}})
        items.sort(key=lambda e: (e["start_ns"], -e["duration_ns"]))
        lanes: list[list[Any]] = []  # [track id, stack of end times]
        thread = items[0].get("thread") or f"thread {tid}"
        for event in items:
            start, end = event["start_ns"], event["start_ns"] + event["duration_ns"]
            for lane in lanes:
                stack = lane[1]
                while stack and stack[-1] <= start:
                    stack.pop()
                if not stack or end <= stack[-1]:
                    stack.append(end)
                    track = lane[0]
                    break
            else:
                track = next_tid
                next_tid += 1
                name = thread if not lanes else f"{thread} (overlapping spans {len(lanes)})"
                out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": track, "args": {"name": name}})
                out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": track,
                            "args": {"sort_index": track}})
                lanes.append([track, [end]])
            args: dict[str, Any] = {"module": event.get("module"), "test": event.get("test")}
            if event.get("exception"):
                args["exception"] = event["exception"]
            out.append({"name": event["name"], "cat": event.get("module") or "function", "ph": "X",
                        "ts": start / 1000, "dur": event["duration_ns"] / 1000, "pid": pid, "tid": track,
                        "args": args})
    other: dict[str, Any] = {"producer": "pytest-telemetry-inject", "runtime_version": RUNTIME_VERSION,
                   "dropped_events": dropped}
    if functions is not None:
        other["functions"] = [{"name": f"{r['module']}:{r['name']}", "count": r["count"], "total_ns": r["total_ns"],
                               "self_ns": r.get("self_ns") or 0, "errors": r["errors"]}
                              for r in sorted(functions, key=lambda r: -r["total_ns"]) if r["count"]]
        other["self_time"] = self_time
    return {"traceEvents": out, "displayTimeUnit": "ms", "otherData": other}


# -- the API for the pytest plugin and for users ----------------------------------------------


def configure(**settings: object) -> dict[str, Any]:
    """Change settings; returns them all. Keywords (each optional): ``disabled`` (bool),
    ``min_duration`` (seconds), ``sample_rate`` (0..1), ``jsonl`` (path or ""), ``trace``
    (path or ""), ``otel`` (True, False or "auto"), ``report`` ("", "1" or a path),
    ``otel_provider`` (a TracerProvider to use instead of the global one), ``keep_events``
    (bool: keep events in memory for ``events()``), ``max_events`` (int), ``collector``
    (bool: make this runtime the one vendored copies forward to), ``otlp`` (a dict of the
    OTLP sink's settings, ``url`` and the keywords of ``_otlp.OtlpSink``; None: off),
    ``self_time`` (seconds between self-time samples; 0: off; see ``self_time()``),
    ``raise_faults`` (bool: raise internal faults instead of counting and swallowing them;
    for the runtime's own tests, see ``internal_faults()``), ``timing_every`` (int: time one
    call of this many of a hot, cheap site; 1: every call, exact totals), ``timing_after``
    (int: timed calls of a site before it may be sampled), ``timing_below`` (seconds: only
    sites whose mean duration is shorter are sampled).
    A path may contain ``{pid}``. Unknown keywords raise TypeError."""
    unknown = set(settings) - set(_Config.__slots__)
    if unknown:
        raise TypeError(f"configure() got unknown settings: {', '.join(sorted(unknown))}")
    with _lock:
        _drain_all()
        _spill()
        _write_sinks()
        for key, value in settings.items():
            if key in ("min_duration", "sample_rate"):
                value = float(value)  # type: ignore[arg-type]
            elif key == "self_time":
                value = float(value) if value else 0.0  # type: ignore[arg-type]
                if not value >= 0:
                    raise ValueError(f"self_time must be 0 or more seconds, not {value!r}")
            elif key in ("jsonl", "trace", "report"):
                value = "" if value in (None, False) else str(value)
            elif key == "otel":
                value = value if value == "auto" else bool(value)
            elif key in ("max_events", "timing_every", "timing_after"):
                value = int(value)  # type: ignore[call-overload]
                if key != "max_events" and value < 1:
                    raise ValueError(f"{key} must be 1 or more, not {value!r}")
            elif key == "timing_below":
                value = float(value)  # type: ignore[arg-type]
                if not value >= 0:
                    raise ValueError(f"timing_below must be 0 or more seconds, not {value!r}")
            elif key == "otel_provider":
                for site in list(_sites.values()):
                    site.ot = None  # tracers of the old provider
            elif key == "otlp":
                value = dict(value) if value else None  # type: ignore[call-overload]
            else:
                value = bool(value)
            setattr(_config, key, value)
        _set_sinks()
        _set_timing(_config.timing_every, _config.timing_after, _config.timing_below)
    _apply()
    if "collector" in settings:
        _set_collecting(bool(settings["collector"]))
    _set_sampler()  # not under _lock: a sample being taken holds it, and close() waits for it
    return _config.as_dict()


def set_current_test(nodeid: str | None) -> None:
    """Attribute the calls that end from now on (in any thread) to test ``nodeid`` (None:
    to no test). Calls still buffered are folded into the previous test first. The first
    call makes this runtime the collector vendored copies forward to. Never raises."""
    global _test
    try:
        with _lock:
            _drain_recent()
            if _test is not None and _test != nodeid:
                _pack_finished(_test)
            _test = nodeid
        if not _collecting:
            _set_collecting(True)
        _maybe_otel()
    except Exception:
        _fault("test switch")


def current_test() -> str | None:
    """The test set by ``set_current_test``."""
    return _test


def _row(site: _Site, stats: Sequence[Any], test: str | None = None, per_test: bool = False) -> SnapshotRow:
    # Sampled self time is an estimate: never more than the measured total.
    row: SnapshotRow = {"module": site.module, "name": site.name, "file": site.file, "line": site.line,
                        "count": stats[0], "total_ns": stats[1], "min_ns": stats[2], "max_ns": stats[3],
                        "errors": stats[4], "exceptions": dict(stats[5] or {}),
                        "self_ns": min(stats[6], stats[1]), "self_samples": stats[7]}
    if len(stats) > 8 and stats[8]:
        _mark_estimated(row, stats[8], stats[9])
    if per_test:
        row["test"] = test
    return row


def _mark_estimated(row: SnapshotRow | dict[str, Any], untimed: int, bound_ns: float) -> None:
    """A row whose total (and so its mean) is an estimate: ``untimed`` of its calls were
    counted but not timed (see ``_estimate``); ``total_error_ns`` bounds the estimate (about
    95%); ``min_ns`` and ``max_ns`` are those of the timed calls. Exact rows have none of
    these keys."""
    row["estimated"] = True
    row["untimed"] = untimed
    row["total_error_ns"] = round(bound_ns)


def _fold(into: _Stats, stats: Sequence[Any]) -> None:
    # The minimum is that of the timed calls: a sampled row may have calls and none timed
    # (its min 0), which must neither win nor keep a later timed minimum out.
    if stats[0] > (stats[8] if len(stats) > 8 else 0):
        if into[0] == (into[8] if len(into) > 8 else 0) or stats[2] < into[2]:
            into[2] = stats[2]
        into[3] = max(into[3], stats[3])
    into[0] += stats[0]
    into[1] += stats[1]
    into[4] += stats[4]
    if len(stats) > 6:
        into[6] += stats[6]
        into[7] += stats[7]
    if len(stats) > 8:
        into[8] += stats[8]
        into[9] += stats[9]  # (added, not in quadrature: the estimates share the same means)
    if stats[5]:
        kinds = into[5] if into[5] is not None else {}
        for key, count in stats[5].items():
            kinds[key] = kinds.get(key, 0) + count
        into[5] = kinds


def snapshot(per_test: bool = False) -> list[SnapshotRow]:
    """The aggregate as plain, JSON-serialisable dicts, exact at the time of the call.

    ``per_test=False``: one row per function seen (called or not since ``reset()``) with
    ``module``, ``name``, ``file``, ``line``, ``count``, ``total_ns``, ``min_ns``, ``max_ns``
    (0 when not called), ``errors``, ``exceptions`` ({exception name: count}), ``self_ns``
    (sampled self time, at most ``total_ns``; 0 when not sampled: see ``self_time()``) and
    ``self_samples``.
    ``per_test=True``: one row per (test, function) with calls, with ``test`` added (the
    nodeid, or None for calls outside any test)."""
    with _lock:
        _drain_all()
        return _rows(per_test)


def _rows(per_test: bool) -> list[SnapshotRow]:
    """``snapshot()``'s rows (the caller holds ``_lock`` and has folded the buffers)."""
    rows: list[SnapshotRow] = []
    for site in list(_sites.values()):
        if not site.shown and not site.stats:
            continue  # bound at import, never called
        if per_test:
            for test, stats in list(site.stats.items()):
                rows.append(_row(site, _stats_of(stats), test, True))
        else:
            total = _new_stats()
            for stats in list(site.stats.values()):
                _fold(total, _stats_of(stats))
            rows.append(_row(site, total))
    return rows


def merge_snapshots(snapshots: Iterable[Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Combine snapshots (e.g. of pytest-xdist workers) exactly: counts, totals and errors
    add up, the smallest min and the largest max win (of the rows with timed calls: a sampled
    row without any has min and max 0, and takes no part). Rows are matched by module, name and
    (for per-test rows) test."""
    merged: dict[tuple[Any, ...], tuple[dict[str, Any], _Stats]] = {}
    for rows in snapshots:
        for row in rows:
            key = (row["module"], row["name"], "test" in row, row.get("test"))
            seen = merged.get(key)
            stats = [row["count"], row["total_ns"], row["min_ns"], row["max_ns"], row["errors"],
                     row.get("exceptions") or None, row.get("self_ns") or 0, row.get("self_samples") or 0,
                     row.get("untimed") or 0, row.get("total_error_ns") or 0]
            if seen is None:
                out = dict(row)
                total = _new_stats()
                _fold(total, stats)
                merged[key] = (out, total)
                continue
            out, total = seen
            _fold(total, stats)
            for name in ("file", "line"):
                if out.get(name) is None and row.get(name) is not None:
                    out[name] = row[name]
    result = []
    for out, total in merged.values():
        out.update(count=total[0], total_ns=total[1], min_ns=total[2], max_ns=total[3], errors=total[4],
                   exceptions=dict(total[5] or {}), self_ns=min(total[6], total[1]), self_samples=total[7])
        if total[8]:
            _mark_estimated(out, total[8], total[9])
        result.append(out)
    return result


def events(clear: bool = False) -> list[EventDict]:
    """The events kept in memory (``configure(keep_events=True)``), as dicts: ``name``,
    ``module``, ``start_ns`` (perf counter), ``ts_ns`` (Unix), ``duration_ns``, ``pid``,
    ``tid``, ``thread``, ``id``, ``parent``, ``test`` and ``exception`` when one escaped.
    ``clear=True`` empties the store (e.g. a worker sending its events once)."""
    with _lock:
        _spill()
        keep = _sinks.get("keep")
        if keep is None:
            return []
        out = [_event_dict(e) for e in keep.kept]
        if clear:
            keep.kept = []
    return out


def dropped_events() -> int:
    """Events not kept because ``max_events`` was reached."""
    keep = _sinks.get("keep")
    return keep.dropped if keep is not None else 0


def otlp_counts() -> dict[str, Any] | None:
    """The OTLP sink's spans: handed over, delivered, lost (and the last reason), or None
    when it is off. Call ``flush()`` first for final figures."""
    sink = _sinks.get("otlp")
    if sink is None:
        return None
    return {"sent": sink.sent, "delivered": sink.delivered, "lost": sink.lost, "error": sink.error}


def reset() -> None:
    """Forget every call and event (sites, settings and sinks stay)."""
    with _lock:
        _reset_state()
        _self_counts[:] = [0, 0, 0, 0]
        _faults.clear()


def _reset_state() -> None:
    global _recent
    _recent = []
    _rows_now.clear()
    for site in list(_sites.values()):
        _take(site)
        del site.errs[:]
        site.stats.clear()
        _unsample(site)
    del _events[:]
    _losses.clear()
    for sink in list(_sinks.values()):
        if isinstance(sink, _KeepSink):
            sink.kept = []
            sink.dropped = 0


def flush() -> None:
    """Fold buffers, hand events to the sinks, write the trace file and flush the
    OpenTelemetry provider. Called at exit too. Never raises."""
    try:
        with _lock:
            _drain_all()
            _spill()
            _write_sinks()
        _maybe_otel()
        if _mode == "otel" and _otel is not None:
            _otel.force_flush()
    except Exception:
        _fault("flush", reraise=False)


# -- the terminal table --------------------------------------------------------------------


def format_report(rows: Sequence[Mapping[str, Any]] | None = None, *, top: int = 25,
                  instrumented: Iterable[str] | None = None, width: int = 60, with_self: bool | None = None) -> str:
    """A plain-text table of the functions with the most total time (``rows``: a snapshot;
    default: this runtime's). ``instrumented``: names (``module:qualname``) of every
    instrumented function; those never called are listed after the table. ``with_self``:
    add the sampled self time as a last column (default: when this runtime sampled it)."""
    if with_self is None:
        with_self = rows is None and self_time() is not None
    if rows is None:
        rows = snapshot()
    called = sorted((r for r in rows if r["count"]), key=lambda r: (-r["total_ns"], r["module"], r["name"]))
    # Columns as in version 1 (scripts split these lines): function, calls, total ms,
    # mean us, max us, errors. The smallest durations are in the JSON and HTML reports.
    # Sampled self time (version 2) comes last, so that those columns keep their places.
    lines = [f"{'function':<{width}} {'calls':>9} {'total ms':>10} {'mean us':>10} {'max us':>10} {'errors':>6}"
             + (f" {'self ms':>10}" if with_self else "")]
    for row in called[:top]:
        name = f"{row['module']}:{row['name']}"
        if len(name) > width:
            name = "..." + name[-(width - 3):]
        lines.append(f"{name:<{width}} {row['count']:>9} {row['total_ns'] / 1e6:>10.3f} "
                     f"{row['total_ns'] / row['count'] / 1e3:>10.2f} {row['max_ns'] / 1e3:>10.2f} {row['errors']:>6}"
                     + (f" {(row.get('self_ns') or 0) / 1e6:>10.3f}" if with_self else "")
                     + (f"  ~ +-{(row.get('total_error_ns') or 0) / 1e6:.3f}" if row.get("estimated") else ""))
    if len(called) > top:
        lines.append(f"... and {len(called) - top} more functions called")
    if any(row.get("estimated") for row in called[:top]):
        # (after the columns: scripts that split the lines keep their places)
        lines.append("~: total and mean estimated from a sample of the calls' timings, +- ms about 95% "
                     "(counts and errors exact)")
    total_calls = sum(r["count"] for r in called)
    total_errors = sum(r["errors"] for r in called)
    lines.append(f"{len(called)} functions called, {total_calls} calls, {total_errors} raised")
    failing = sorted((r for r in called if r["errors"]), key=lambda r: -r["errors"])
    if failing:
        lines.append("exceptions:")
        for row in failing[:top]:
            kinds = ", ".join(f"{k} x{v}" for k, v in sorted((row.get("exceptions") or {}).items(),
                                                                key=lambda kv: -kv[1]))
            lines.append(f"  {row['module']}:{row['name']}: {row['errors']} ({kinds})")
    if instrumented is not None:
        seen = {f"{r['module']}:{r['name']}" for r in called}
        never = sorted(set(instrumented) - seen)
        lines.append(f"never called: {len(never)} of {len(set(instrumented))} instrumented functions")
        lines.extend(f"  {name}" for name in never[:top])
        if len(never) > top:
            lines.append(f"  ... and {len(never) - top} more")
    return "\n".join(lines)


# -- vendored copies forward to the collector ----------------------------------------------------
#
# Every copy of this file (the package's ``_core`` and each vendored ``telemetry_utils``) is
# a module with its own state. While the package runtime is the collector (the pytest plugin
# called ``set_current_test`` or ``configure(collector=True)``), a vendored copy's tracers
# take the collector's span functions, so committed telemetry lands in the test reports.
# Copies imported before the collector starts are adopted then (found in ``sys.modules`` by
# the ``_TELEMETRY_INJECT_CORE`` marker, read from the module's ``__dict__`` so no module
# ``__getattr__`` runs); copies imported later look for it when their tracers are made.
# Forwarding costs nothing per call: the copy's ``Tracer.span`` IS the collector's.


def _find_collector() -> ModuleType | None:
    """(In a vendored copy) the package runtime, when it is collecting."""
    if __name__ == _MAIN_NAME:
        return None
    main = sys.modules.get(_MAIN_NAME)
    if main is None or main is sys.modules.get(__name__):
        return None
    namespace = getattr(main, "__dict__", {})
    if namespace.get("_TELEMETRY_INJECT_CORE") != _TELEMETRY_INJECT_CORE or not namespace.get("_collecting"):
        return None
    _adopt(main)
    return main


def _attach_follower(follower: Tracer) -> None:
    """(In the collector) make a vendored copy's tracer use ours for the same module."""
    lead = tracer(follower.module)
    lead._where.update(follower._where)
    if follower not in lead._followers:
        lead._followers.append(follower)
    follower._follow(lead)


def _adopt(main: ModuleType | None) -> None:
    """(In a vendored copy) forward to ``main`` (None: stop forwarding)."""
    global _lead
    if main is _lead:
        return
    _lead = main
    for tr in list(_tracers.values()):
        try:
            if main is None:
                tr._unfollow()
            else:
                main._attach_follower(tr)
        except Exception:
            _fault("vendored copy")


def _set_collecting(on: bool) -> None:
    """(In the package runtime) start or stop being the collector of vendored copies."""
    global _collecting
    if __name__ != _MAIN_NAME or on == _collecting:
        return
    _collecting = on
    _config.collector = on
    me = sys.modules.get(__name__)
    if on:
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None) if isinstance(module, type(sys)) else None
            if namespace and namespace.get("_TELEMETRY_INJECT_CORE") == _TELEMETRY_INJECT_CORE and module is not me:
                try:
                    namespace["_adopt"](me)
                    _copies.append(module)
                except Exception:
                    _fault("vendored copy")
    else:
        for module in _copies:
            try:
                module._adopt(None)
            except Exception:
                _fault("vendored copy")
        del _copies[:]
        for tr in list(_tracers.values()):
            del tr._followers[:]


# -- environment, fork, exit ------------------------------------------------------------------


def _read_environment() -> None:
    env = os.environ
    cfg = _config
    cfg.disabled = env.get("TELEMETRY_INJECT_DISABLED", "").strip().lower() in _TRUE
    for name, attr, kind in (("TELEMETRY_INJECT_MIN_DURATION", "min_duration", float),
                             ("TELEMETRY_INJECT_SAMPLE_RATE", "sample_rate", float),
                             ("TELEMETRY_INJECT_TIMING_EVERY", "timing_every", int),
                             ("TELEMETRY_INJECT_TIMING_AFTER", "timing_after", int),
                             ("TELEMETRY_INJECT_TIMING_BELOW", "timing_below", float)):
        text = env.get(name, "").strip()
        if text:
            try:
                value = kind(text)
                if kind is int and value < 1:
                    raise ValueError(text)
                setattr(cfg, attr, value)
            except ValueError:
                sys.stderr.write(f"telemetry: ignoring {name}={text!r} (not a number)\n")
    cfg.jsonl = env.get("TELEMETRY_INJECT_JSONL", "").strip()
    cfg.trace = env.get("TELEMETRY_INJECT_TRACE", "").strip()
    otel = env.get("TELEMETRY_INJECT_OTEL", "").strip().lower()
    cfg.otel = True if otel in _TRUE else False if otel in _FALSE else "auto"
    report = env.get("TELEMETRY_INJECT_REPORT", "").strip()
    cfg.report = "" if report.lower() in _FALSE else report
    cfg.raise_faults = env.get("TELEMETRY_INJECT_RAISE_FAULTS", "").strip().lower() in _TRUE
    every = env.get("TELEMETRY_INJECT_SELF_TIME", "").strip()
    if every:
        try:
            cfg.self_time = max(0.0, float(every) / 1000) if every.lower() not in _FALSE else 0.0
        except ValueError:
            sys.stderr.write(f"telemetry: ignoring TELEMETRY_INJECT_SELF_TIME={every!r} (not milliseconds)\n")


def _after_fork_in_child() -> None:
    """The child starts clean: its own lock, no calls, no events, no current span."""
    global _lock, _acc_lock, _pid
    _lock = threading.Lock()
    _acc_lock = threading.Lock()
    _pid = os.getpid()
    _reset_state()
    _thread_names.clear()
    trace = _sinks.get("trace")
    if trace is not None:
        trace.forked = True
    if _sinks.pop("otlp", None) is not None and _config.otlp:
        # Its sending thread stayed in the parent: the child sends through one of its own
        # (a new random id prefix, its spans never clash with the parent's).
        try:
            from ._otlp import OtlpSink

            settings = dict(_config.otlp)
            sink = OtlpSink(settings.pop("url"), epoch_ns=_EPOCH_NS, **settings)
            sink.settings = _config.otlp
            _sinks["otlp"] = sink
        except Exception:
            _fault("OTLP sink start", reraise=False)
    try:
        _current.set(None)
    except Exception:
        pass
    _self_counts[:] = [0, 0, 0, 0]
    try:
        _set_sampler()  # the parent's sampling thread did not come along
    except Exception:
        _fault("self-time sampler", reraise=False)


# (The package runtime) writes a JSON or HTML report: set by runtime/__init__.py, so that this
# module never imports the report module, which imports it.
_report_writer: Callable[[str, object], None] | None = None


def _write_report() -> None:
    where = _config.report
    if not where:
        return
    rows = snapshot()
    if not any(r["count"] for r in rows):
        return
    sampled = self_time() is not None
    if where.lower() in _TRUE:
        sys.stderr.write("telemetry:\n" + format_report(rows, with_self=sampled) + "\n")
        return
    path = _expand(where)
    if path.endswith((".json", ".html")):
        writer = _report_writer
        if writer is None and __name__ != _MAIN_NAME:  # a vendored copy: the package's writer, if installed
            try:
                writer = __import__("pytest_telemetry_inject.runtime.report", fromlist=["_"]).write_from_runtime
            except Exception:
                writer = None
        if writer is not None:
            writer(path, sys.modules[__name__])
            return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(format_report(rows, with_self=sampled) + "\n")


def _at_exit() -> None:
    if _sampler is not None and _sampler_pid == os.getpid():
        _sampler.close()
    flush()
    try:
        _write_report()
    except Exception:
        _fault("report at exit", reraise=False)
    try:
        for key, loss in sink_losses().items():
            where = getattr(_sinks.get(key), "path", "") or key
            sys.stderr.write(f"telemetry: {loss['lost']} events could not be written to the {key} sink ({where}): "
                             f"{loss['error']}\n")
        faults = internal_faults()
        if faults:
            total = sum(f["count"] for f in faults.values())
            where, first = next(iter(faults.items()))
            sys.stderr.write(f"telemetry: {total} internal fault(s) of the runtime were swallowed, the program went on "
                             f"(first, in {where}: {first['first']}); please report them\n")
    except Exception:
        pass


try:
    _read_environment()
    _set_sinks()
    _set_timing(_config.timing_every, _config.timing_after, _config.timing_below)
    _apply()
    _set_sampler()
except Exception:  # a broken environment must not break the import of user code
    pass
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
