"""Run the engine over trees of files: scan, process in parallel, write, summarise.

Files whose whole result is in the file memo are served in this process (a warm run
starts no worker); the others go to a pool of worker processes, each with its own engine
and view of the shared cache. Outputs are written atomically, keeping each file's mode.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..languages import get_language
from ..runtime.vendor import DEFAULT_MODULE, write_vendored
from ..scan import VENDORED_REASON, ScanItem, scan
from ..settings import Settings
from ..sourcefile import read_bytes, write_atomic
from . import pipeline
from .cache import CacheCounters, ScriptCache
from .pipeline import Engine, FileResult, FunctionOutcome

MODES = ("instrument", "strip", "check")


@dataclass
class RunOptions:
    mode: str = "instrument"
    output_dir: Path | None = None
    in_place: bool = False
    dry_run: bool = False
    diff: bool = False
    start_method: str = ""
    """How worker processes start ("fork", "spawn", ...); default: fork on Linux. Inside a
    process that runs threads (a pytest-xdist worker) forking is unsafe: use "spawn"."""
    write_read_only: bool = False
    """With ``in_place``: rewrite files that are read-only too (refused by default)."""

    @property
    def writes(self) -> bool:
        return not self.dry_run and (self.in_place or self.output_dir is not None)


@dataclass
class FileReport:
    """What the summary keeps of a file (no content)."""

    path: str
    language: str
    status: str
    reason: str
    functions: Sequence[FunctionOutcome]
    memo_hit: bool
    counters: CacheCounters
    tally: tuple[dict[str, int], dict[str, dict[str, int]]] = ({}, {})
    diff: str = ""
    written: str = ""
    cache_warning: str = ""
    """Why the cache could not be written, as the process that tried saw it."""


@dataclass
class RunSummary:
    mode: str
    files: list[FileReport] = field(default_factory=list)
    other_files: int = 0
    vendored: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    workers: int = 1
    cache_path: str = ""
    cache_warning: str = ""
    left_out: list[str] = field(default_factory=list)
    """Folders the scan left out (build output no entry point leads to), with the reason."""

    def function_counts(self) -> Counter:
        total: Counter = Counter()
        for report in self.files:
            total.update(report.tally[0])
        return total

    def reasons(self, status: str) -> Counter:
        total: Counter = Counter()
        for report in self.files:
            total.update(report.tally[1].get(status, {}))
        return total

    def counters(self) -> CacheCounters:
        total = CacheCounters()
        for report in self.files:
            total.add(report.counters)
        return total

    def to_json(self, details: bool = True) -> dict[str, Any]:
        """The summary; ``details`` adds every skipped, failed and missing function (which
        reads the function lists a warm run otherwise never decodes)."""
        counts = self.function_counts()
        counters = self.counters()
        files = Counter(r.status for r in self.files)
        functions_total = sum(counts.values())
        return {
            "format": 1,
            "mode": self.mode,
            "elapsed_s": round(self.elapsed, 4),
            "workers": self.workers,
            "files": {"total": len(self.files), **dict(sorted(files.items())), "other": self.other_files,
                      "skipped_reasons": dict(Counter(r.reason for r in self.files if r.status == "skipped")),
                      "errors": [{"path": r.path, "reason": r.reason} for r in self.files if r.status == "error"]},
            "functions": {
                "total": functions_total,
                **dict(sorted(counts.items())),
                "skipped_reasons": dict(self.reasons("skipped")),
                "failed_reasons": dict(self.reasons("failed")),
                "per_function_ms": round(self.elapsed * 1000 / functions_total, 5) if functions_total else None,
            },
            "cache": {"path": self.cache_path, "memo_hits": counters.memo_hits,
                      "memo_misses": counters.memo_misses, "script_hits": counters.script_hits,
                      "script_misses": counters.script_misses, "corrupt_entries": counters.corrupt,
                      "write_errors": counters.write_errors, "warning": self.cache_warning},
            "vendored_modules": self.vendored,
            "left_out": self.left_out,
            "errors": self.errors,
            "skipped": [{"path": r.path, "qualname": f.qualname, "line": f.line, "reason": f.reason}
                        for r in self.files for f in r.functions if f.status in ("skipped", "failed")]
            if details else None,
            "missing": [{"path": r.path, "qualname": f.qualname, "line": f.line}
                        for r in self.files if r.tally[0].get("missing") for f in r.functions
                        if f.status == "missing"],
        }


# -- worker side ------------------------------------------------------------------------------

_ENGINE: Engine | None = None
_OPTIONS: RunOptions | None = None
_BATCH = 8  # files a worker processes between two appends to the cache index


def _init_worker(settings: Settings, cache_root: str | None, options: RunOptions,
                 refactorer: Callable[..., Any] | None = None, parent: int = 0) -> None:
    global _ENGINE, _OPTIONS
    if parent:
        _die_with(parent)
    cache = ScriptCache(cache_root) if cache_root else None
    if cache is not None:
        cache.defer_index = True  # flushed after each batch (_process_batch)
    if refactorer is not None:  # a spawned worker does not inherit the module's default
        pipeline.set_default_refactorer(refactorer)
    _ENGINE = Engine(settings, cache)
    _OPTIONS = options


def _die_with(parent: int) -> None:
    """End this worker when its parent is gone: a parent killed with SIGKILL cannot tell
    its workers, which would wait on their pipe forever (adopted by init). A daemon thread
    looks every half second (portable, unlike Linux's PR_SET_PDEATHSIG, which also fires
    when the thread that started the worker ends)."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="telemetry-inject parent watch", daemon=True).start()


def _process(task: tuple[str, str, str, str]) -> tuple[FileReport, bool]:
    """Run one file in a worker (or in this process); returns its report and whether it
    changed (or would change)."""
    assert _ENGINE is not None and _OPTIONS is not None
    source, destination, display, import_name = task
    try:
        data = read_bytes(source)
    except OSError as exc:
        return _error_report(display, f"cannot read: {exc.strerror or exc}"), False
    result = _run_engine(_ENGINE, _OPTIONS.mode, data, display, import_name)
    report = _finish(result, data, source, destination, _OPTIONS)
    if _ENGINE.cache is not None and result.counters.write_errors:
        report.cache_warning = _ENGINE.cache.write_error
    return report, result.changed


def _process_batch(tasks: list[tuple[str, str, str, str]]) -> list[tuple[FileReport, bool]]:
    """``_process`` over a few files, then the cache's index lines they made, appended at
    once (a failure to do so is reported with the batch's last file)."""
    assert _ENGINE is not None
    done = [_process(task) for task in tasks]
    cache = _ENGINE.cache
    if cache is not None:
        before = cache.counters.write_errors
        cache.flush_index()
        if cache.counters.write_errors > before and done:
            report = done[-1][0]
            report.counters.write_errors += cache.counters.write_errors - before
            report.cache_warning = cache.write_error
    return done


def _batches(tasks: list, size: int) -> list[list]:
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def _run_engine(engine: Engine, mode: str, data: bytes, display: str, import_name: str) -> FileResult:
    try:
        if mode == "strip":
            return engine.strip(data, display)
        if mode == "check":
            return engine.check(data, display)
        return engine.instrument(data, display, import_name=import_name)
    except Exception as exc:  # an engine bug must not stop the other files
        return FileResult(display, status="error", reason=f"internal error: {type(exc).__name__}: {exc}")


_MADE_DIRS: set[str] = set()


def _finish(result: FileResult, data: bytes, source: str, destination: str, options: RunOptions) -> FileReport:
    report = FileReport(result.path, result.language, result.status, result.reason, result.functions,
                        result.memo_hit, result.counters, result.counts())
    output = result.output if result.output is not None else data
    if options.diff and result.output is not None:
        report.diff = _unified_diff(data, result.output, result.path)
    if options.writes and options.mode != "check":
        target = source if options.in_place else destination
        try:
            if options.in_place:
                if result.output is not None:
                    # A link's target is rewritten and the link stays (os.replace on the link
                    # itself would put a regular file in its place).
                    target = os.path.realpath(source)
                    problem = "" if options.write_read_only else _read_only(target)
                    if problem:
                        report.status, report.reason = "error", problem
                        return report
                    _clear_stale_temporaries(os.path.dirname(target))
                    write_atomic(target, output)
                    report.written = target
            elif not _same_content(target, output):
                folder = os.path.dirname(target)
                if folder not in _MADE_DIRS:
                    os.makedirs(folder, exist_ok=True)
                    _MADE_DIRS.add(folder)
                    _clear_stale_temporaries(folder)
                write_atomic(target, output, like=source)
                report.written = target
        except OSError as exc:
            report.status = "error"
            report.reason = f"cannot write {target}: {exc.strerror or exc}"
    return report


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


_CLEARED_DIRS: set[str] = set()


def _clear_stale_temporaries(folder: str) -> None:
    """Remove this tool's temporary files (``.ti-<pid>-<n>.tmp``) that a writer killed in the
    middle left in a folder it writes to, once per folder and process: only those whose
    process is gone."""
    if folder in _CLEARED_DIRS:
        return
    _CLEARED_DIRS.add(folder)
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
    return FileReport(path, "", "error", reason, [], False, CacheCounters())


def _unified_diff(before: bytes, after: bytes, path: str) -> str:
    import difflib

    old = before.decode("utf-8", "replace").splitlines(keepends=True)
    new = after.decode("utf-8", "replace").splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, f"a/{path}", f"b/{path}"))


# -- parent side ------------------------------------------------------------------------------


def vendored_import(item: ScanItem, settings: Settings) -> tuple[str, Path | None]:
    """(import name, file the vendored module goes to, relative to the item's root) for a
    file under ``item.root``. Explicit ``vendored_module`` settings win."""
    if settings.vendored_module:
        return settings.vendored_module, None
    folder = item.path.parent
    top: Path | None = None
    while (folder / "__init__.py").is_file():
        top = folder
        if folder.resolve() == item.root.resolve() or folder.parent == folder:
            break
        folder = folder.parent
    if top is None:
        location = item.relative.parent / f"{DEFAULT_MODULE}.py"
        return DEFAULT_MODULE, location
    # The dotted name reaches above the item's root when the root is inside a package.
    names: list[str] = []
    above = top
    while (above / "__init__.py").is_file():
        names.append(above.name)
        if above.parent == above:
            break
        above = above.parent
    names.reverse()
    location = top.relative_to(item.root) / f"{DEFAULT_MODULE}.py" if top != item.root else Path(f"{DEFAULT_MODULE}.py")
    return ".".join(names + [DEFAULT_MODULE]), location


def vendored_runtime(item: ScanItem, settings: Settings) -> tuple[str, list[tuple[Path | None, bytes | None]]]:
    """(import name, [(file relative to the item's root, its content)]) of the vendored
    runtime a file needs. A language with a ``vendored_runtime(path, root, settings)``
    method decides (JavaScript, TypeScript, Go: which files, where, and the name the file
    imports them by); for Python it is ``vendored_import``'s one module, whose content
    (None here) ``write_vendored`` writes, and whose location is None for an explicit
    ``vendored_module``."""
    language = get_language(item.language) if item.language else None
    hook = getattr(language, "vendored_runtime", None)
    if hook is None:
        import_name, location = vendored_import(item, settings)
        return import_name, [(location, None)]
    plan = hook(item.path, item.root, settings)
    return plan.import_name, [(relative, content) for relative, content in plan.files]


def vendored_targets_of(item: ScanItem, settings: Settings, options: RunOptions,
                        project_root: Path) -> tuple[str, dict[str, bytes | None]]:
    """(import name, {destination: content or None for Python's module}) for one file."""
    import_name, files = vendored_runtime(item, settings)
    targets: dict[str, bytes | None] = {}
    for location, content in files:
        if content is None:
            where = _vendored_destination(item, location, options, settings, project_root)
        elif options.output_dir is not None:
            where = str(options.output_dir / location)
        else:
            where = str(item.root / location)
        if where:
            targets[where] = content
    return import_name, targets


def run(paths: Iterable[str], settings: Settings, options: RunOptions, *, project_root: Path,
        cache: ScriptCache | None = None,
        progress: Callable[[int], Any] | None = None,
        on_total: Callable[[int], Any] | None = None) -> RunSummary:
    started = time.perf_counter()
    summary = RunSummary(options.mode)
    exclude = [options.output_dir] if options.output_dir is not None else []
    items = scan(paths, settings, project_root=project_root, exclude_dirs=exclude)
    summary.left_out = [f"{folder} ({why})" for folder, why in getattr(items, "left_out", ())]
    if cache is None and settings.use_cache:
        cache = ScriptCache(project_root / settings.cache_dir)
    summary.cache_path = str(cache.root) if cache else ""

    tasks: list[tuple[str, str, str, str]] = []
    vendored_targets: dict[str, dict[str, bytes | None]] = {}
    output_dir = str(options.output_dir) if options.output_dir is not None else None
    for item in items:
        display = str(item.path)
        destination = os.path.join(output_dir, str(item.relative)) if output_dir is not None else display
        if item.language is None:
            _other_file(item, destination, options, summary)
            continue
        import_name = ""
        if settings.target == "vendored" and options.mode == "instrument":
            import_name, targets = vendored_targets_of(item, settings, options, project_root)
            if targets:
                vendored_targets.setdefault(display, targets)
        tasks.append((str(item.path), destination, display, import_name))
    if on_total:
        on_total(len(tasks))

    engine = Engine(settings, cache)
    global _ENGINE, _OPTIONS
    _ENGINE, _OPTIONS = engine, options
    misses: list[tuple[str, str, str, str]] = []
    reports: dict[str, FileReport] = {}
    changed: set[str] = set()

    def record(task: tuple[str, str, str, str], report: FileReport, did_change: bool) -> None:
        reports[task[2]] = report
        if did_change:
            changed.add(task[2])
        if progress:
            progress(1)

    if options.mode == "instrument" and cache is not None:
        # Warm path: files whose memo is there are finished here, without a worker. (Threads
        # were tried: contention made them slower.)
        for task in tasks:
            task, report, did_change = _from_memo(engine, task, options)
            if report is None:
                misses.append(task)
            else:
                record(task, report, did_change)
    else:
        misses = list(tasks)

    workers = min(settings.workers(), len(misses))
    summary.workers = max(workers, 1)
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(options.start_method or ("fork" if sys.platform == "linux" else "spawn"))
        misses.sort(key=lambda t: _size(t[0]), reverse=True)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(settings, str(cache.root) if cache else None, options,
                                           pipeline.default_refactorer(), os.getpid())) as pool:
            batches = _batches(misses, _BATCH)
            for batch, results in zip(batches, pool.map(_process_batch, batches)):
                for task, (report, did_change) in zip(batch, results):
                    record(task, report, did_change)
    else:
        deferred = cache is not None and not cache.defer_index
        if deferred:
            cache.defer_index = True
        try:
            for batch in _batches(misses, _BATCH):
                for task, (report, did_change) in zip(batch, _process_batch(batch)):
                    record(task, report, did_change)
        finally:
            if deferred:
                cache.flush_index()
                cache.defer_index = False
    summary.files.extend(reports[t[2]] for t in tasks if t[2] in reports)
    if cache is not None and cache.write_error:
        summary.cache_warning = cache.write_error
    if not summary.cache_warning:
        for report in summary.files:
            if report.counters.write_errors:
                summary.cache_warning = report.cache_warning or f"the cache at {summary.cache_path} could not be written"
                break
    if cache is not None and not summary.cache_warning and options.mode == "instrument":
        from . import seal

        summary.cache_warning = seal.problem()  # no key: nothing sealed, memos checked on every use

    if vendored_targets and options.writes:
        wanted: dict[str, bytes | None] = {}
        for path in changed:
            wanted.update(vendored_targets.get(path, {}))
        for destination in sorted(wanted):
            content = wanted[destination]
            try:
                written = write_vendored(destination, content)
                if written:
                    summary.vendored.append(destination)
            except OSError as exc:
                summary.errors.append(f"cannot write the vendored module {destination}: {exc.strerror or exc}")
    summary.elapsed = time.perf_counter() - started
    return summary


def _from_memo(engine: Engine, task: tuple[str, str, str, str],
               options: RunOptions) -> tuple[tuple[str, str, str, str], FileReport | None, bool]:
    source, destination, display, import_name = task
    try:
        data = read_bytes(source)
    except OSError as exc:
        return task, _error_report(display, f"cannot read: {exc.strerror or exc}"), False
    result = engine.lookup_memo(data, display, import_name=import_name, counted=False)
    if result is None:
        return task, None, False  # a worker does it (and counts the miss)
    return task, _finish(result, data, source, destination, options), result.changed


def _vendored_destination(item: ScanItem, location: Path | None, options: RunOptions,
                          settings: Settings, project_root: Path) -> str | None:
    if location is None:  # an explicit module: its path is set, or derived from its name
        relative = settings.vendored_path or settings.vendored_module.replace(".", "/") + ".py"
        absolute = (project_root / relative).resolve()
        if options.output_dir is None:
            return str(absolute)
        try:
            return str(options.output_dir / absolute.relative_to(item.root.resolve()))
        except ValueError:
            return str(options.output_dir / Path(relative).name)
    if options.output_dir is not None:
        return str(options.output_dir / location)
    return str(item.root / location)


def _other_file(item: ScanItem, destination: str, options: RunOptions, summary: RunSummary) -> None:
    """A file that is no source: copied to ``-o DIR`` as it is (a vendored module is left
    out when stripping; an in-tree symbolic link is copied as a link)."""
    summary.other_files += 1
    if options.output_dir is None or not options.writes:
        if options.mode == "strip" and options.in_place and options.writes \
                and item.skip_reason == VENDORED_REASON:
            try:
                os.unlink(item.path)
                summary.vendored.append(f"removed {item.path}")
            except OSError as exc:
                summary.errors.append(f"cannot remove {item.path}: {exc.strerror or exc}")
        return
    if options.mode == "strip" and item.skip_reason == VENDORED_REASON:
        return
    target = Path(destination)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.path.is_symlink():
            if item.symlink_target is not None:
                if target.is_symlink() or target.exists():
                    target.unlink()
                os.symlink(item.symlink_target, target)
            return
        import shutil

        source_stat = os.stat(item.path)
        try:
            mine = os.stat(target)
            if mine.st_size == source_stat.st_size and mine.st_mtime_ns == source_stat.st_mtime_ns:
                return  # copied before (copy2 keeps the time)
        except OSError:
            pass
        shutil.copy2(item.path, target)
    except OSError as exc:
        summary.errors.append(f"cannot copy {item.path} to {target}: {exc.strerror or exc}")


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0

