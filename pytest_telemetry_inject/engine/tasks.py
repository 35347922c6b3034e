"""The work on one file of a run: what the runner hands out (``FileTask``, ``RunOptions``),
what comes back (``FileReport``), and the ``FileProcessor`` that reads a file, runs the
engine on it and writes the result.

The runner's own process and its workers use the same processor; everything that crosses
to a worker process here pickles.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..record import Record
from ..sourcefile import read_bytes, write_atomic
from .cache import CacheCounters
from .pipeline import Engine, FileResult, FunctionOutcome

if TYPE_CHECKING:
    from ..types import FileStatus, Mode

MODES: tuple[Mode, ...] = ("instrument", "strip", "check")
Tally = tuple[dict[str, int], dict[str, dict[str, int]]]
"""(count per status, reason counts per status) of a file's functions."""


class RunOptions(Record):
    __slots__ = ("mode", "output_dir", "in_place", "dry_run", "diff", "start_method", "write_read_only")
    mode: Mode
    output_dir: Path | None
    in_place: bool
    dry_run: bool
    diff: bool
    start_method: str
    """How worker processes start ("fork", "spawn", ...); default: fork on Linux. Inside a
    process that runs threads (a pytest-xdist worker) forking is unsafe: use "spawn"."""
    write_read_only: bool
    """With ``in_place``: rewrite files that are read-only too (refused by default)."""

    def __init__(self, mode: Mode = "instrument", output_dir: Path | None = None, in_place: bool = False,
                 dry_run: bool = False, diff: bool = False, start_method: str = "",
                 write_read_only: bool = False) -> None:
        self.mode, self.output_dir, self.in_place, self.dry_run = mode, output_dir, in_place, dry_run
        self.diff, self.start_method, self.write_read_only = diff, start_method, write_read_only

    @property
    def writes(self) -> bool:
        return not self.dry_run and (self.in_place or self.output_dir is not None)


class FileTask(NamedTuple):
    """One source file of a run, as the runner hands it to whoever processes it."""

    source: str
    """The file read."""
    destination: str
    """Where ``-o DIR`` writes its output (the source itself otherwise)."""
    display: str
    """The path reports name the file by."""
    import_name: str
    """The import name of the vendored runtime the output imports ('' when not vendored)."""


class FileReport(Record):
    """What the summary keeps of a file (no content)."""

    __slots__ = ("path", "language", "status", "reason", "functions", "memo_hit", "counters", "tally", "diff",
                 "written", "cache_warning", "tests")
    path: str
    language: str
    status: FileStatus
    reason: str
    functions: Sequence[FunctionOutcome]
    memo_hit: bool
    counters: CacheCounters
    tally: Tally
    diff: str
    written: str
    cache_warning: str
    """Why the cache could not be written, as the process that tried saw it."""
    tests: str
    """The name of the file's generated test module in the cache (its memo's), or ''."""

    def __init__(self, path: str, language: str, status: FileStatus, reason: str,
                 functions: Sequence[FunctionOutcome], memo_hit: bool, counters: CacheCounters,
                 tally: Tally = ({}, {}), diff: str = "", written: str = "", cache_warning: str = "",
                 tests: str = "") -> None:
        self.path, self.language, self.status, self.reason = path, language, status, reason
        self.functions, self.memo_hit, self.counters, self.tally = functions, memo_hit, counters, tally
        self.diff, self.written, self.cache_warning, self.tests = diff, written, cache_warning, tests


Done = tuple[FileReport, bool]
"""A file's report, and whether the file changed (or would change)."""


class FileProcessor:
    """Reads, processes and writes the files of one run in one process (the runner's, or a
    worker's). It remembers which folders it made and cleared, so each is done once."""

    def __init__(self, engine: Engine, options: RunOptions) -> None:
        self.engine = engine
        self.options = options
        self.writer = OutputWriter(options)

    def process(self, task: FileTask) -> Done:
        """Run one file through the engine and write what comes out."""
        try:
            data = read_bytes(task.source)
        except OSError as exc:
            return _error_report(task.display, f"cannot read: {exc.strerror or exc}"), False
        result = _run_engine(self.engine, self.options.mode, data, task.display, task.import_name)
        report = self._finish(result, data, task)
        if self.engine.cache is not None and result.counters.write_errors:
            report.cache_warning = self.engine.cache.write_error
        return report, result.changed

    def process_batch(self, tasks: Sequence[FileTask]) -> list[Done]:
        """``process`` over a few files, then the cache's index lines they made, appended at
        once (a failure to do so is reported with the batch's last file)."""
        done = [self.process(task) for task in tasks]
        cache = self.engine.cache
        if cache is not None:
            before = cache.counters.write_errors
            cache.flush_index()
            if cache.counters.write_errors > before and done:
                report = done[-1][0]
                report.counters.write_errors += cache.counters.write_errors - before
                report.cache_warning = cache.write_error
        return done

    def from_memo(self, task: FileTask) -> Done | None:
        """The file finished from its memo alone (None: it is not there, and a worker does
        it, counting the miss). The cache's counters are left alone."""
        try:
            data = read_bytes(task.source)
        except OSError as exc:
            return _error_report(task.display, f"cannot read: {exc.strerror or exc}"), False
        result = self.engine.lookup_memo(data, task.display, import_name=task.import_name, counted=False)
        if result is None:
            return None
        return self._finish(result, data, task), result.changed

    # -- writing ------------------------------------------------------------------------------

    def _finish(self, result: FileResult, data: bytes, task: FileTask) -> FileReport:
        options = self.options
        report = FileReport(result.path, result.language, result.status, result.reason, result.functions,
                            result.memo_hit, result.counters, result.counts(), tests=result.tests)
        if options.diff and result.output is not None:
            report.diff = _unified_diff(data, result.output, result.path)
        if options.writes and options.mode != "check":
            written, problem = self.writer.write(result.output, data, task.source, task.destination)
            if problem:
                report.status, report.reason = "error", problem
            report.written = written
        return report


class OutputWriter:
    """Writes what a run made, the one way every front door writes (the runner's files and
    ``--traditional``'s): in place (a link's target; a read-only file refused unless asked;
    stale temporaries of killed writers cleared), or beside under ``-o DIR`` (unchanged files
    copied too, a file with the same content left alone, each folder made once)."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self._made_dirs: set[str] = set()
        self._cleared_dirs: set[str] = set()

    def write(self, output: bytes | None, data: bytes, source: str, destination: str) -> tuple[str, str]:
        """Write ``output`` (None: the file is unchanged, ``data`` is its content). Returns
        (the path written or "", why it could not be written or "")."""
        if self.options.in_place and output is None:
            return "", ""
        # In place, a link's target is rewritten and the link stays (os.replace on the link
        # itself would put a regular file in its place).
        target = os.path.realpath(source) if self.options.in_place else destination
        try:
            if output is not None and self.options.in_place:
                return self._write_in_place(output, target)
            content = data if output is None else output
            if _same_content(target, content):
                return "", ""
            self._write_beside(content, target, source)
            return target, ""
        except OSError as exc:
            return "", f"cannot write {target}: {exc.strerror or exc}"

    def _write_in_place(self, output: bytes, target: str) -> tuple[str, str]:
        problem = "" if self.options.write_read_only else _read_only(target)
        if problem:
            return "", problem
        self._clear_stale_temporaries(os.path.dirname(target))
        write_atomic(target, output)
        return target, ""

    def _write_beside(self, output: bytes, target: str, source: str) -> None:
        folder = os.path.dirname(target)
        if folder not in self._made_dirs:
            os.makedirs(folder, exist_ok=True)
            self._made_dirs.add(folder)
            self._clear_stale_temporaries(folder)
        write_atomic(target, output, like=source)

    def _clear_stale_temporaries(self, folder: str) -> None:
        """Remove this tool's temporary files (``.ti-<pid>-<n>.tmp``) that a writer killed in
        the middle left in a folder it writes to, once per folder: only those whose process
        is gone."""
        if folder in self._cleared_dirs:
            return
        self._cleared_dirs.add(folder)
        try:
            names = [name for name in os.listdir(folder) if name.startswith(".ti-") and name.endswith(".tmp")]
        except OSError:
            return
        for name in names:
            pid = name[len(".ti-"):].split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            path = os.path.join(folder, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.unlink(path)
            except OSError:
                pass


def _run_engine(engine: Engine, mode: Mode, data: bytes, display: str, import_name: str) -> FileResult:
    try:
        if mode == "strip":
            return engine.strip(data, display)
        if mode == "check":
            return engine.check(data, display)
        return engine.instrument(data, display, import_name=import_name)
    except Exception as exc:  # an engine bug must not stop the other files
        return FileResult(display, status="error", reason=f"internal error: {type(exc).__name__}: {exc}")


def _read_only(path: str) -> str:
    """Why ``path`` must not be rewritten in place ('' when it may be): it is read-only, as
    its mode bits say (root may write anything, and editors still refuse) or as the system
    says for this user."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
        return f"{path} is read-only: it is left unchanged (--write-read-only rewrites it anyway)"
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: not ours to judge
    return True


def _same_content(path: str, data: bytes) -> bool:
    """Whether ``path`` already holds ``data`` (re-running into the same -o folder rewrites
    nothing)."""
    try:
        return os.stat(path).st_size == len(data) and read_bytes(path) == data
    except OSError:
        return False


def _error_report(path: str, reason: str) -> FileReport:
    """The report of a file that could not be processed."""
    return FileReport(path, "", "error", reason, [], False, CacheCounters())


def _unified_diff(before: bytes, after: bytes, path: str) -> str:
    import difflib

    old = before.decode("utf-8", "replace").splitlines(keepends=True)
    new = after.decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, f"a/{path}", f"b/{path}"))
