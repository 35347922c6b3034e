"""The debug trace: JSON lines under ``logs/debug_trace_<timestamp>.jsonl``.

Turned on by ``DEBUG_TRACE=1`` or ``--debug-trace``; ``DEBUG_TRACE_LEVEL`` /
``--trace-level`` picks the lowest level written (TRACE, DEBUG, INFO, WARNING, ERROR;
default DEBUG); ``DEBUG_TRACE_CONSOLE=0`` / ``--no-trace-console`` stops the copy of each
event on stderr. ``DEBUG_TRACE_DIR`` moves the folder (default ``logs`` under the current
directory). Every event is one line::

    {"ts": "...", "t": 0.1234, "pid": 1, "level": "DEBUG", "cat": "llm.request", "msg": "...", ...fields}

Categories: ``function`` (calls and returns), ``llm.request``, ``llm.response``,
``llm.error``, ``llm.import``, ``model.rotation``, ``gpu``, ``tokens``, ``cost``, ``cache``,
``validation``, ``refactor``, ``traditional``, ``process``.

Cheap when off: ``TRACE.on`` is a plain attribute, no file is opened and no field is
formatted; hot paths test ``TRACE.on`` before building an event. Every line passes through
``redact`` so no configured key reaches the file or the console.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
CATEGORIES = ("function", "llm.request", "llm.response", "llm.error", "llm.import", "model.rotation",
              "gpu", "tokens", "cost", "cache", "validation", "refactor", "traditional", "process")
TRACE_LEVEL, DEBUG, INFO, WARNING, ERROR = 5, 10, 20, 30, 40
_TRUE = ("1", "true", "yes", "on")

P = ParamSpec("P")
R = TypeVar("R")


def parse_level(value: str | int | None, default: int = DEBUG) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, int):
        return value
    text = str(value).strip().upper()
    if text.isdigit():
        return int(text)
    if text not in LEVELS:
        from .errors import ConfigError

        raise ConfigError(f"unknown trace level {value!r}; use one of {', '.join(LEVELS)}")
    return LEVELS[text]


class Tracer:
    """One per process (``TRACE``). Writes are appended with one ``os.write`` per event, so
    forked workers can share the file."""

    def __init__(self) -> None:
        self.on = False
        self.level = DEBUG
        self.console = True
        self.path = ""
        self._fd = -1
        self._pid = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._exit_hook = False
        self._exported = False

    # -- configuration ----------------------------------------------------------------------

    def configure(self, *, enabled: bool, level: str | int | None = None, console: bool | None = None,
                  directory: str | os.PathLike[str] | None = None, path: str | None = None) -> None:
        """Turn the trace on or off. The file is created on the first event; its path is put
        in ``DEBUG_TRACE_FILE`` so that child processes append to the same file."""
        self.close()
        self.on = enabled
        if not enabled:
            if self._exported:
                for name in ("DEBUG_TRACE", "DEBUG_TRACE_FILE", "DEBUG_TRACE_LEVEL", "DEBUG_TRACE_CONSOLE"):
                    os.environ.pop(name, None)
                self._exported = False
            return
        self.level = parse_level(level)
        if console is not None:
            self.console = console
        if path:
            self.path = path
        else:
            folder = os.fspath(directory) if directory else os.environ.get("DEBUG_TRACE_DIR") or "logs"
            stamp = time.strftime("%Y%m%d_%H%M%S")
            # Runs started in the same second share the file: every event carries its pid.
            self.path = os.path.abspath(os.path.join(folder, f"debug_trace_{stamp}.jsonl"))
        os.environ["DEBUG_TRACE"] = "1"
        os.environ["DEBUG_TRACE_FILE"] = self.path
        os.environ["DEBUG_TRACE_LEVEL"] = str(self.level)
        os.environ["DEBUG_TRACE_CONSOLE"] = "1" if self.console else "0"
        self._exported = True
        if not self._exit_hook:
            atexit.register(self._at_exit)
            self._exit_hook = True

    def configure_from_env(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        if str(env.get("DEBUG_TRACE", "")).strip().lower() not in _TRUE:
            return
        self.configure(enabled=True, level=env.get("DEBUG_TRACE_LEVEL"),
                       console=str(env.get("DEBUG_TRACE_CONSOLE", "1")).strip().lower() in _TRUE,
                       path=env.get("DEBUG_TRACE_FILE") or None)

    def enabled(self, level: int = DEBUG) -> bool:
        return self.on and level >= self.level

    # -- events -----------------------------------------------------------------------------

    def event(self, level: int, category: str, message: str = "", **fields: Any) -> None:
        if not self.on or level < self.level:
            return
        from .redact import redact

        record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "t": round(time.monotonic() - self._started, 4),
                  "pid": os.getpid(), "level": _level_name(level), "cat": category, "msg": message}
        for key, value in fields.items():
            record[key] = value
        line = redact(json.dumps(record, default=str, ensure_ascii=False)) + "\n"
        self._write(line)
        if self.console:
            extra = " ".join(f"{k}={_short(v)}" for k, v in fields.items())
            try:
                sys.stderr.write(redact(f"[trace] {record['level']:<7} {category:<14} {message} {extra}".rstrip())
                                 + "\n")
            except (OSError, ValueError):
                pass

    def _write(self, line: str) -> None:
        data = line.encode("utf-8", "replace")
        with self._lock:
            if self._fd < 0 or self._pid != os.getpid():
                try:
                    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                    self._pid = os.getpid()
                except OSError as exc:
                    self.on = False  # a trace that cannot be written must not stop the run
                    sys.stderr.write(f"telemetry-inject: warning: cannot write the debug trace {self.path}: "
                                     f"{exc.strerror or exc}\n")
                    return
            try:
                os.write(self._fd, data)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                try:
                    os.close(self._fd)
                except OSError:
                    pass
            self._fd = -1

    def _at_exit(self) -> None:
        if self.on:
            # Whether litellm was ever imported by this process: a run without LLM work must not.
            self.event(INFO, "process", "exit", litellm_imported="litellm" in sys.modules,
                       modules=len(sys.modules))
        self.close()


def _level_name(level: int) -> str:
    for name, number in LEVELS.items():
        if number == level:
            return name
    return str(level)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


TRACE = Tracer()
TRACE.configure_from_env()


def event(level: int, category: str, message: str = "", **fields: Any) -> None:
    TRACE.event(level, category, message, **fields)


def traced(category: str = "function", level: int = TRACE_LEVEL) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Trace the calls and returns (with durations) of a function; free when the trace is off."""

    def wrap(function: Callable[P, R]) -> Callable[P, R]:
        name = f"{function.__module__}.{function.__qualname__}"

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not TRACE.on or level < TRACE.level:
                return function(*args, **kwargs)
            started = time.perf_counter()
            TRACE.event(level, category, "call", function=name)
            try:
                result = function(*args, **kwargs)
            except BaseException as exc:
                TRACE.event(level, category, "raise", function=name, error=type(exc).__name__,
                            duration_s=round(time.perf_counter() - started, 6))
                raise
            TRACE.event(level, category, "return", function=name,
                        duration_s=round(time.perf_counter() - started, 6))
            return result

        return wrapper

    return wrap
