"""The telemetry runtime: what instrumented code calls. Standard library only.

This one file is both ``pytest_telemetry_inject.runtime`` and, copied verbatim, the
vendored module written into projects that commit their telemetry (target ``vendored``).

Instrumented modules do ``_telemetry = tracer(__name__)`` once, then per call either
``with _telemetry.span("Qual.name"):`` (functions and coroutines),
``with _telemetry.generator_span("Qual.name"):`` (generators: the span lives from the first
step to exhaustion or close, and never becomes the caller's current span) or the decorator
``@_telemetry.instrument("Qual.name")``.

Per call it records count, total/min/max duration and exceptions. It never raises into
user code. Environment:

- ``TELEMETRY_INJECT_DISABLED=1``: every span is a no-op.
- ``TELEMETRY_INJECT_REPORT=1`` (or ``=PATH``): print a table of calls at exit (to stderr or PATH).
- ``TELEMETRY_INJECT_JSONL=PATH``: append one JSON event per call to PATH (flushed at exit).
"""

from __future__ import annotations

import atexit
import functools
import inspect
import json
import os
import sys
import threading
import time

__all__ = [
    "Tracer",
    "format_report",
    "no_telemetry",
    "reset",
    "snapshot",
    "tracer",
]

RUNTIME_VERSION = 1
_clock = time.perf_counter_ns
_TRUE = ("1", "true", "yes", "on")
_DISABLED = os.environ.get("TELEMETRY_INJECT_DISABLED", "").strip().lower() in _TRUE
_lock = threading.Lock()
_sites: dict[tuple[str, str], "_Site"] = {}
_tracers: dict[str, "Tracer"] = {}
_events: list[str] | None = [] if os.environ.get("TELEMETRY_INJECT_JSONL") else None


class _Site:
    """One instrumented function (module + qualname) and its aggregate."""

    __slots__ = ("module", "name", "count", "total", "min", "max", "errors")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0
        self.errors = 0

    def record(self, start: int, duration: int, error: BaseException | None) -> None:
        with _lock:
            self.count += 1
            self.total += duration
            if self.count == 1 or duration < self.min:
                self.min = duration
            if duration > self.max:
                self.max = duration
            if error is not None:
                self.errors += 1
        if _events is not None:
            event = {"module": self.module, "name": self.name, "start_ns": start, "duration_ns": duration,
                     "pid": os.getpid(), "thread": threading.get_ident()}
            if error is not None:
                event["exception"] = type(error).__name__
            _events.append(json.dumps(event))


class _Span:
    __slots__ = ("_site", "_start")

    def __init__(self, site: _Site) -> None:
        self._site = site

    def __enter__(self) -> "_Span":
        self._start = _clock()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        end = _clock()
        try:
            if exc is not None and isinstance(exc, (GeneratorExit, StopIteration, StopAsyncIteration)):
                exc = None
            self._site.record(self._start, end - self._start, exc)
        except Exception:  # the runtime never raises into user code
            pass
        return False


class _NoSpan:
    __slots__ = ()

    def __enter__(self) -> "_NoSpan":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return False


_NO_SPAN = _NoSpan()


class Tracer:
    """The spans of one module."""

    __slots__ = ("module", "_sites")

    def __init__(self, module: str) -> None:
        self.module = module
        self._sites: dict[str, _Site] = {}

    def _site(self, name: str) -> _Site:
        site = self._sites.get(name)
        if site is None:
            with _lock:
                site = _sites.setdefault((self.module, name), _Site(self.module, name))
            self._sites[name] = site
        return site

    def span(self, name: str) -> "_Span | _NoSpan":
        if _DISABLED:
            return _NO_SPAN
        site = self._sites.get(name)
        return _Span(site if site is not None else self._site(name))

    generator_span = span

    def instrument(self, name: str):  # type: ignore[no-untyped-def]
        """Decorator form: the same span around every call, for every kind of function."""

        def decorate(func):  # type: ignore[no-untyped-def]
            if _DISABLED:
                return func
            span = self.span
            if inspect.isasyncgenfunction(func):
                @functools.wraps(func)
                async def async_gen_wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                    with span(name):
                        async for item in func(*args, **kwargs):
                            yield item
                return async_gen_wrapper
            if inspect.iscoroutinefunction(func):
                @functools.wraps(func)
                async def async_wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                    with span(name):
                        return await func(*args, **kwargs)
                return async_wrapper
            if inspect.isgeneratorfunction(func):
                @functools.wraps(func)
                def gen_wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                    with span(name):
                        return (yield from func(*args, **kwargs))
                return gen_wrapper

            @functools.wraps(func)
            def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                with span(name):
                    return func(*args, **kwargs)
            return wrapper

        return decorate


def tracer(module: str) -> Tracer:
    """The tracer of ``module`` (one per module name)."""
    found = _tracers.get(module)
    if found is None:
        with _lock:
            found = _tracers.setdefault(module, Tracer(module))
    return found


def no_telemetry(func):  # type: ignore[no-untyped-def]
    """Mark a function the tool must leave alone (it recognises the decorator's name)."""
    return func


def snapshot() -> list[dict]:
    """The aggregate: one row per function that has a site, called or not."""
    with _lock:
        sites = list(_sites.values())
    return [{"module": s.module, "name": s.name, "count": s.count, "total_ns": s.total,
             "min_ns": s.min, "max_ns": s.max, "errors": s.errors} for s in sites]


def reset() -> None:
    with _lock:
        for site in _sites.values():
            site.count = site.total = site.min = site.max = site.errors = 0
    if _events is not None:
        del _events[:]


def format_report(top: int = 25) -> str:
    rows = sorted((r for r in snapshot() if r["count"]), key=lambda r: r["total_ns"], reverse=True)
    lines = [f"{'function':<50} {'calls':>8} {'total ms':>10} {'mean us':>10} {'max us':>10} {'errors':>6}"]
    for row in rows[:top]:
        name = f"{row['module']}:{row['name']}"
        lines.append(f"{name[-50:]:<50} {row['count']:>8} {row['total_ns'] / 1e6:>10.3f} "
                     f"{row['total_ns'] / row['count'] / 1e3:>10.2f} {row['max_ns'] / 1e3:>10.2f} {row['errors']:>6}")
    if len(rows) > top:
        lines.append(f"... and {len(rows) - top} more functions")
    return "\n".join(lines)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    reset()


def _at_exit() -> None:
    try:
        path = os.environ.get("TELEMETRY_INJECT_JSONL")
        if path and _events:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(_events) + "\n")
            del _events[:]
        where = os.environ.get("TELEMETRY_INJECT_REPORT", "").strip()
        if where and where.lower() not in ("0", "false", "no", "off"):
            text = format_report()
            if where.lower() in _TRUE:
                sys.stderr.write("telemetry:\n" + text + "\n")
            else:
                with open(where, "a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
    except Exception:
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
